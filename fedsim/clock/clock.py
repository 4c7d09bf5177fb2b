"""The simulated clock: how long each selected device's round takes on its phone, and which devices a
round keeps.

A device's simulated round = download + compute + upload:
  compute_s = (restore_ms + steps * train_ms + save_ms) / 1000 / speed
  comm_s    = 8 * down_bytes / (1000 * down_kbps) + 8 * up_bytes / (1000 * up_kbps)
and its energy is fedsim.clock.energy's model of those seconds (energy_j).
with the artifact's per-call latencies measured on this machine with one thread (once per artifact
and machine, then reused: reuse_latency), or pinned from a file, so the same config and seed give the
same simulated times on any machine that uses the same latency table. The wall time of the host that ran a device
never enters it. numpy and pandas only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.clock.energy import COMPUTE_W, energy_j
from fedsim.clock.profiles import PROFILE_COLUMNS, FleetError
from fedsim.core import seeded
from fedsim.core.context import local_steps
from fedsim.pipeline.base import SimCost


def read_latency(path: str | os.PathLike[str]) -> dict[str, float]:
    """A pinned latency table: JSON {"restore": ms, "train": ms per batch, "save": ms} (e.g. measured on
    a phone); a run folder's artifact.json works too (its latency_ms)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise FleetError(f"--latency {path}: cannot read it as JSON ({e})") from None
    table = data.get("latency_ms", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise FleetError(f"--latency {path}: expected an object with restore, train and save in ms")
    out = {}
    for key in ("restore", "train", "save"):
        value = table.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
            raise FleetError(f"--latency {path}: {key} must be a positive number of ms, got {value!r}")
        out[key] = float(value)
    return out


def machine_key() -> str:
    """This machine as the latency cache knows it: host name, architecture, CPU model and count."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}|{platform.machine()}|{cpu}|{os.cpu_count()}"


def reuse_latency(artifact: bytes, measured: dict[str, float], identity: str = "") -> tuple[dict[str, float], str]:
    """The latency table of this artifact on this machine: the first run's measurement, kept in
    $FEDSIM_CACHE/latency (default ~/.cache/fedsim) under the artifact's identity (artifact.json's
    `identity`, the same for every conversion of one model; else the file's hash) and the machine,
    so that the same command gives the same simulated times, byte for byte, on every later run here.
    (table, where it came from)."""
    folder = Path(os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim") / "latency"
    model = identity.encode() or hashlib.sha256(artifact).digest()
    key = hashlib.sha256(model + machine_key().encode()).hexdigest()[:40]
    path = folder / f"{key}.json"
    if path.is_file():
        try:
            return read_latency(path), f"measured earlier on this machine, cached in {path}"
        except FleetError:
            pass  # damaged: measured again below
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**measured, "machine": machine_key()}))
        os.replace(tmp, path)
    except OSError:
        return measured, "measured at this run's start (the cache is not writable)"
    return measured, f"measured at this run's start, cached in {path}"


@dataclass(frozen=True)
class SimOutcome:
    """One selected device's round on the simulated clock, decided before any host runs it."""

    status: str  # "run" (a host runs it), "straggler" (finished too late: discarded), "dropped"
    steps: int | None  # train steps it runs (None: all of them)
    compute_s: float
    comm_s: float
    finish_s: float  # NaN for a dropped device (it reports nothing)
    energy_j: float = float("nan")  # the battery it spent (NaN for a dropped device: when it left is unknown)


@dataclass
class Clock:
    """The simulated clock of a run: profiles, the latency table, and the round policy."""

    profiles: pd.DataFrame
    latency_ms: dict[str, float]
    batch_size: int
    local_epochs: int
    seed: int
    deadline: float | None = None
    straggler: str = "drop"
    over_select: float = 1.0
    latency_source: str = ""  # where the latency table came from (config.json: sim_latency_source)
    passes: int = 1  # restore-and-save pairs a device runs a round (a personal model's add one: Ditto)
    compiled_draws: bool = (
        False  # numpy's draws compiled (fedsim.core.seeded): the same numbers, for loops that draw per arrival
    )
    arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.arrays = {c: self.profiles[c].to_numpy(np.float64) for c in PROFILE_COLUMNS}
        watts = self.profiles.get("compute_w", COMPUTE_W)
        self.arrays["compute_w"] = np.broadcast_to(np.asarray(watts, np.float64), len(self.profiles))

    def steps(self, samples: np.ndarray) -> np.ndarray:
        return local_steps(samples, self.batch_size, self.local_epochs)

    def parts(
        self, ids: np.ndarray, steps: np.ndarray, down_bytes: float, up_bytes: float, extra: SimCost | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(compute_s, down_s, up_s, wait_s) of devices `ids` running `steps` train steps each; `extra`:
        what the pipeline's stages add (a secure aggregation's keys, shares, masks and round trips)."""
        a, lat = self.arrays, self.latency_ms
        extra = extra or SimCost()
        fixed = self.passes * (lat["restore"] + lat["save"])
        compute = (fixed + steps * lat["train"] + 1000.0 * extra.compute_s) / 1000.0
        compute = compute / a["speed"][ids]
        down = 8.0 * (down_bytes + extra.down_bytes) / (1000.0 * a["down_kbps"][ids])
        up = 8.0 * (up_bytes + extra.up_bytes) / (1000.0 * a["up_kbps"][ids])
        return compute, down, up, extra.latency_s

    def times(
        self, ids: np.ndarray, steps: np.ndarray, down_bytes: float, up_bytes: float, extra: SimCost | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(compute_s, comm_s) of devices `ids` running `steps` train steps each (see parts)."""
        compute, down, up, wait = self.parts(ids, steps, down_bytes, up_bytes, extra)
        return compute, down + up + wait

    def energy(
        self, ids: np.ndarray, steps: np.ndarray, down_bytes: float, up_bytes: float, extra: SimCost | None = None
    ) -> np.ndarray:
        """Joules each of devices `ids` spends on a round of `steps` train steps (fedsim.clock.energy)."""
        return self._joules(ids, *self.parts(ids, steps, down_bytes, up_bytes, extra))

    def _joules(
        self, ids: np.ndarray, compute: np.ndarray, down: np.ndarray, up: np.ndarray, wait: float
    ) -> np.ndarray:
        a = self.arrays
        return energy_j(compute, a["compute_w"][ids], down, up, a["down_kbps"][ids], a["up_kbps"][ids], wait)

    def available(self, round_num: int) -> np.ndarray:
        """Whether each device is available in `round_num` (seeded by seed and round)."""
        draws = seeded.uniforms((self.seed, round_num, 0xA7A1), len(self.profiles), self.compiled_draws)
        return draws < self.arrays["availability"]

    def drops(self, round_num: int, ids: np.ndarray) -> np.ndarray:
        """Whether each of `ids` drops out mid-round (seeded by seed, round and device)."""
        draws = seeded.uniforms((self.seed, round_num, 0xD409), len(self.profiles), self.compiled_draws)
        return draws[ids] < self.arrays["dropout"][ids]

    def fewest_seconds(
        self, samples: np.ndarray, down_bytes: float, up_bytes: float, extra: SimCost | None = None
    ) -> float:
        """The shortest round any device could finish: all its steps (drop) or one step (partial)."""
        ids = np.arange(len(self.profiles))
        steps = np.ones(len(ids), np.int64) if self.straggler == "partial" else self.steps(samples)
        compute, comm = self.times(ids, steps, down_bytes, up_bytes, extra)
        return float((compute + comm).min())

    def plan(
        self,
        round_num: int,
        ids: list[int],
        samples: np.ndarray,
        want: int,
        down_bytes: float,
        up_bytes: float,
        extra: SimCost | None = None,
    ) -> tuple[dict[int, SimOutcome], float]:
        """Each selected device's outcome and the round's simulated length.

        Dropped devices report nothing (and their energy is NaN: when they left is unknown). With
        --deadline, a device that cannot finish by it is a straggler (drop), or runs the steps that
        fit (partial; none fit: straggler). Of the rest the first `want` to finish are kept
        (over-selection picks more than `want`); later ones are stragglers (they spent the energy).
        The round lasts until the last kept device finishes, or the deadline if a device was cut by
        it."""
        order = np.asarray(ids, np.int64)
        full = self.steps(samples[order])
        compute, down, up, wait = self.parts(order, full, down_bytes, up_bytes, extra)  # (times and energy, once)
        comm, joules = down + up + wait, self._joules(order, compute, down, up, wait)
        finish = compute + comm
        dropped = self.drops(round_num, order)
        out: dict[int, SimOutcome] = {}
        steps: dict[int, int | None] = {}
        cut = False
        for i, d in enumerate(order.tolist()):
            if dropped[i]:
                out[d] = SimOutcome("dropped", None, float(compute[i]), float(comm[i]), float("nan"))
                continue
            budget: int | None = None
            if self.deadline is not None and finish[i] > self.deadline:
                cut = True
                fit = 0
                if self.straggler == "partial":
                    fixed = self.passes * (self.latency_ms["restore"] + self.latency_ms["save"])
                    fixed = fixed / 1000.0 / self.arrays["speed"][d]
                    if extra is not None:
                        fixed += extra.compute_s / self.arrays["speed"][d]
                    per_step = self.latency_ms["train"] / 1000.0 / self.arrays["speed"][d]
                    # (a step that ends exactly at the deadline counts, whatever the float rounding)
                    fit = int(max(0.0, math.floor((self.deadline - comm[i] - fixed) / per_step + 1e-9)))
                    fit = min(fit, int(full[i]))
                if fit < 1:
                    out[d] = SimOutcome(
                        "straggler", None, float(compute[i]), float(comm[i]), float(finish[i]), float(joules[i])
                    )
                    continue
                budget = fit
                c, m = self.times(np.array([d]), np.array([fit]), down_bytes, up_bytes, extra)
                compute[i], comm[i], finish[i] = c[0], m[0], c[0] + m[0]
                joules[i] = self.energy(np.array([d]), np.array([fit]), down_bytes, up_bytes, extra)[0]
            steps[d] = budget
        position = {d: i for i, d in enumerate(order.tolist())}
        candidates = sorted(steps, key=lambda d: (finish[position[d]], d))
        keep = set(candidates[:want])
        for i, d in enumerate(order.tolist()):
            if d in steps:
                status = "run" if d in keep else "straggler"
                out[d] = SimOutcome(
                    status, steps[d], float(compute[i]), float(comm[i]), float(finish[i]), float(joules[i])
                )
        kept = [out[d].finish_s for d in keep]
        length = max(kept) if kept else 0.0
        if cut and self.deadline is not None and len(keep) < want:
            length = self.deadline  # the server waited for devices that never made it
        elif not kept and self.deadline is not None:
            length = self.deadline
        return out, float(length)
