"""The one stand-in of the tests, at the device boundary: an interpreter whose signatures are numpy, so
the coordinator, the real hosts (fedsim.engine.host) and the real upload pipeline run without a
model. Each device d holds d + 1 samples of the value d, and `train` adds the batch's mean input to
every weight: device d uploads the global weights + d (with one batch a round)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.checkpoint import read_checkpoint, write_checkpoint
from fedsim.core.context import RunContext
from fedsim.core.task import Task
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import ShardData
from fedsim.engine.local import LocalEngine
from fedsim.engine.settings import HostSettings


def zero_weights() -> dict[str, np.ndarray]:
    return {"a/kernel": np.zeros((2, 3), np.float32), "a/bias": np.zeros(3, np.float32)}


class FakeRunner:
    """restore / train / save / infer of a two-tensor model in numpy. `spoil[d](weights)` makes device
    d save those bytes instead; while `unreachable` is set every device fails."""

    unreachable = False

    def __init__(self, artifact: bytes = b"", spoil: dict | None = None) -> None:
        self.spoil = spoil or {}
        self.weights = zero_weights()
        self.device = -1

    def inputs(self, x: np.ndarray) -> np.ndarray:
        return x

    def labels(self, y: np.ndarray) -> np.ndarray:
        return y

    def restore(self, path: Path, extras: dict | None = None) -> dict[str, np.ndarray]:
        self.weights = read_checkpoint(Path(path).read_bytes())
        return self.weights

    def train(self, x: np.ndarray, y: np.ndarray, extras: dict | None = None) -> float:
        if FakeRunner.unreachable:
            raise ConnectionError("host unreachable")
        self.device = round(float(np.mean(x)))
        self.weights = {k: (v + np.float32(self.device)).astype(np.float32) for k, v in self.weights.items()}
        return 1.0

    def save(self, path: Path) -> None:
        spoil = self.spoil.get(self.device)
        Path(path).write_bytes(spoil(self.weights) if spoil else write_checkpoint(self.weights))

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 2), 0.5, np.float32)

    def initial_checkpoint(self, scratch: Path) -> bytes:
        return write_checkpoint(zero_weights())


def fleet(devices: int) -> ShardData:
    """Device d: d + 1 samples (one feature) of the value d, labels 0."""
    sizes = np.arange(devices) + 1
    x = np.repeat(np.arange(devices, dtype=np.float32), sizes)[:, None]
    ends = np.cumsum(sizes)
    bounds = np.stack([ends - sizes, ends, ends], axis=1)
    return ShardData(x, np.zeros(len(x), np.int32), bounds)


class FakeEngine(LocalEngine):
    """The local engine's real hosts, each lending its devices a FakeRunner; it records the devices
    each run_round call was given, and the first `down` calls find every device unreachable."""

    def __init__(self, devices: int, hosts: int = 2, spoil: dict | None = None, down: int = 0) -> None:
        super().__init__(hosts, runner_factory=lambda artifact: FakeRunner(artifact, spoil))
        settings = HostSettings(local_epochs=1, batch_size=devices + 1, seed=0)
        self.hosts = [DeviceHost(h, fleet(devices), settings, [], b"fake", self.runner_factory) for h in range(hosts)]
        self.test_samples = 1
        self.calls: list[list[int]] = []
        self.down = down

    def run_round(self, round_num, global_checkpoint, device_ids, work):
        self.calls.append(list(device_ids))
        FakeRunner.unreachable = len(self.calls) <= self.down
        try:
            return super().run_round(round_num, global_checkpoint, device_ids, work)
        finally:
            FakeRunner.unreachable = False


def make_coordinator(config, engine=None, recorder=None, strategy=None):
    """A coordinator of `config` (its strategy, or `strategy`) over the fake engine's real hosts."""
    from fedsim.checkpoint import write_checkpoint
    from fedsim.loop.coordinator import Coordinator
    from fedsim.loop.settings import RunSettings
    from fedsim.pipeline import Pipeline

    engine = engine or FakeEngine(config.devices)
    run = run_context(config.devices, config.devices_per_round, rounds=config.rounds, sampling=config.sampling)
    strategy = (strategy or config.make_strategy()).bind(run)
    pipeline = Pipeline.build(config.stage_settings, config.seed)
    pipeline.check(strategy)
    pipeline.bind(run)
    settings = config.section(RunSettings)
    return Coordinator(
        settings, run, engine, strategy, pipeline, write_checkpoint(zero_weights()), recorder, progress=False
    )


def run_context(
    devices: int, per_round: int | None = None, byzantine: float = 0.0, rounds: int = 1, sampling: str = "fixed"
) -> RunContext:
    return RunContext(
        Task((1,), "features", 2),
        devices,
        per_round or devices,
        np.arange(devices) + 1,
        batch_size=devices + 1,
        byzantine=byzantine,
        params=9,
        upload_bytes=0,
        rounds=rounds,
        sampling=sampling,
    )


class StopAt(LocalEngine):
    """In-process hosts that raise `error` when round `stop` starts (a kill, Ctrl-C or a crash at that
    point; the rounds before it are committed)."""

    def __init__(self, stop, error=KeyboardInterrupt, hosts=2):
        super().__init__(hosts)
        self.stop, self.error = stop, error

    def run_round(self, round_num, *args, **kwargs):
        if round_num == self.stop:
            raise self.error
        return super().run_round(round_num, *args, **kwargs)
