"""The update pipeline: every step between a device's `save` and the strategy's `apply` is a stage.

After pfl-research's postprocessors (`postprocess_one_user` on the worker, `postprocess_server` after
the reduce) and TFF's aggregation factories. A stage is one small class with its own settings section;
it says where its step happens in the system being simulated (on the device or on the server) and
hooks into the round at up to four points, each optional:
- `plan`: before the round, on the coordinator: instructions for the selected devices (an attacker's
  role, the labels it trains on) and their coefficients c_i in the sums;
- `upload`: on the host, for every device's upload in turn (the checkpoint it saved, read and
  checked): rewrite it, change its bytes on the wire, or refuse it (`Rejected`);
- `server`: on the coordinator, on the round's reduced Aggregate before the strategy sees it;
- `upload_bytes`: what it does to the bytes a device sends (the simulated clock and `bytes_up`).
It may keep state across rounds (saved with every committed round) and add columns to the round's
row (`round_metrics`). The host and the coordinator call these hooks in order and know no stage by
name: a new stage is a new file registered in fedsim.pipeline.STAGES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim.core.devicestate import DeviceState
from fedsim.core.instructions import Instruction
from fedsim.core.settings import Section
from fedsim.strategies.base import HONEST, Aggregate, DevicePlan, State, Weights

if TYPE_CHECKING:
    from fedsim.core.context import RunContext
    from fedsim.strategies.base import Strategy


class Rejected(ValueError):
    """A stage refuses an upload; the message is recorded as the device's reason."""


class StopRun(Exception):
    """A stage ends the run before a round (e.g. its privacy budget is spent): the rounds before stay,
    and the run folder's status says why (`status`); it can be resumed once the cause is lifted."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SimCost:
    """What a stage adds to each device's round on the simulated clock: bytes each way beyond the
    model, compute at this machine's speed (divided by the device's), and fixed waiting (round trips)."""

    up_bytes: int = 0
    down_bytes: int = 0
    compute_s: float = 0.0
    latency_s: float = 0.0

    def __add__(self, other: SimCost) -> SimCost:
        return SimCost(
            self.up_bytes + other.up_bytes,
            self.down_bytes + other.down_bytes,
            self.compute_s + other.compute_s,
            self.latency_s + other.latency_s,
        )


@dataclass
class Upload:
    """One device's upload as it passes the per-upload stages on the host. `flat` and `weights` may
    be views into the host's reader: a stage that changes them makes new arrays."""

    device_id: int
    flat: np.ndarray | None  # the weights as one float32 vector (None until the checks made it)
    weights: Weights  # the same by name, as read from the saved checkpoint
    nbytes: int  # the bytes the device sends
    coefficient: float  # c_i in the sums
    plan: DevicePlan
    note: str = ""  # what a stage did to it ("clipped: ..."), recorded as the device's reason
    payload: np.ndarray | None = None  # an integer encoding to sum securely (fedsim.pipeline.secagg)
    counts: dict[str, float] = field(default_factory=dict)  # summed over the round's uploads
    metrics: dict[str, float] = field(default_factory=dict)  # recorded in the device's row
    # what the device kept from its last round and keeps for its next (fedsim.core.segments), by key
    state: DeviceState = field(default_factory=DeviceState)


@dataclass(frozen=True)
class UploadContext:
    """What the per-upload stages may read in one round on one host."""

    round_num: int
    spec: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype) of a valid upload
    global_flat: np.ndarray | None  # the global weights (float64) when a stage needs them
    seed: int
    global32: np.ndarray | None = None  # the same in float32, as a device holds them


@dataclass(frozen=True)
class ServerContext:
    """What the server-side stages may read in one round, on the coordinator."""

    round_num: int
    global_flat: np.ndarray  # float32
    selected: int  # devices selected this round
    seed: int
    survivors: tuple[int, ...] = ()  # the devices whose uploads the round summed
    dropouts: tuple[int, ...] = ()  # selected devices that did not (dropped, late, failed, rejected)


class Stage:
    """One step of the update pipeline (see the module's docstring)."""

    name: ClassVar[str] = "stage"
    Settings: ClassVar[type[Section]]
    where: ClassVar[str] = "device"  # device or server: where the step happens in the simulated system
    needs_global: ClassVar[bool] = False  # upload() reads UploadContext.global_flat
    accumulate: str | None = None  # "stack": every update on the server; "modular": a secure sum
    modulus: int = 0  # with accumulate "modular"
    columns: ClassVar[tuple[str, ...]] = ()  # the rounds-table columns round_metrics() fills (numbers)
    device_columns: ClassVar[tuple[str, ...]] = ()  # the devices-table columns Upload.metrics fills
    # True if it runs under --mode async (FedBuff's server steps call every hook a round does), else
    # why it needs synchronous rounds (the run is refused in one line)
    asynchronous: ClassVar[bool | str] = True
    # where it sits in an upload's path: after these stages (by name), when they are on
    after: ClassVar[tuple[str, ...]] = ()
    # stages it cannot run with (by name), and why, said when both are on
    conflicts: ClassVar[dict[str, str]] = {}
    # the instructions its `plan` may give devices (the runtime must honour what they need)
    instructions: ClassVar[tuple[type[Instruction], ...]] = ()
    # its seconds on the hosts are a rounds-table column (`<name>_host_s`); off for what every run does
    timed: ClassVar[bool] = True

    def device_table_columns(self) -> tuple[str, ...]:
        """The devices-table columns this stage fills in this run (its device_columns by default)."""
        return self.device_columns

    @classmethod
    def make(cls, settings: Any, seed: int = 0) -> Stage | None:
        """The stage the run's settings (this stage's section) ask for, or None when it is off."""
        return None

    @classmethod
    def make_for(cls, settings: Any, seed: int, strategy: Strategy | None) -> Stage | None:
        """The same, for a stage the strategy may turn on too (partial sharing: fedper's head)."""
        return cls.make(settings, seed)

    def check(self, strategy: Strategy) -> None:
        """ConfigError if this stage cannot run with `strategy` (said before any work)."""

    def check_fleet(self, devices: int) -> None:
        """ConfigError, before any work, if the stage's settings mean nothing for `devices` devices."""

    def before_round(self, round_num: int) -> None:
        """On the coordinator before a round is selected; raise StopRun to end the run here."""

    def sim_cost(self, cohort: int, params: int) -> SimCost:
        """What the stage adds to each device's round on the simulated clock and in bytes."""
        return SimCost()

    def server_seconds(self) -> float:
        """Simulated seconds the server spent on this stage after the round's last upload."""
        return 0.0

    def broadcast(self, flat: np.ndarray) -> np.ndarray:
        """The model the devices receive (the same object when this stage does not change it)."""
        return flat

    def download_bytes(self, nbytes: int, params: int) -> int:
        """The bytes of what each device downloads, given what it would download before."""
        return nbytes

    def describe(self) -> dict[str, Any]:
        """What the stage resolved from its settings and the run (config.json's `stages`)."""
        return {}

    def bind(self, run: RunContext) -> None:
        """Facts of the prepared run (the task, the fleet) the stage needs."""

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        """Add this round's instructions for the selected devices to `plans` (in place)."""

    def coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        """The selected devices' coefficients c_i, as this stage needs them weighted."""
        return coefficients

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        """One device's upload after this step; raise Rejected to refuse it."""
        return up

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate | None:
        """The round's reduced updates after this step, before the strategy's apply; None when the
        round's aggregate is lost (a secure aggregation with too few survivors to unmask)."""
        return aggregate

    def upload_bytes(self, nbytes: int, params: int) -> int:
        """The bytes a device sends after this step, given what it would send before (`params`: the
        model's parameters). Must equal what `upload` sets as `Upload.nbytes`."""
        return nbytes

    def round_metrics(self) -> dict[str, float]:
        """Columns this stage adds to the round's row (rounds.parquet)."""
        return {}

    def state(self) -> State:
        """What the stage keeps across rounds (saved with every committed round)."""
        return {}

    def restore(self, state: State) -> None:
        """Continue from a state `state()` returned (--resume)."""

    def settle(self, flat: np.ndarray, before: np.ndarray) -> np.ndarray:
        """The new global model after the strategy's apply (`before`: the model it started from), as
        this stage needs it (the same object when it leaves it alone)."""
        return flat

    def personaliser(self) -> Instruction | None:
        """What makes a device's personal model from its state, for personalised evaluation (None:
        this stage keeps no personal model)."""
        return None

    def seed_states(self) -> dict[int, dict[str, np.ndarray]]:
        """Device state this stage held itself (restored from an earlier fedsim's run folder), to be
        handed to the devices' state once; by device id."""
        return {}

    @property
    def on_host(self) -> bool:
        """Whether hosts run its `upload` step (they are sent `for_host()`)."""
        return type(self).upload is not Stage.upload

    def for_host(self) -> Stage:
        """What hosts need of this stage (it travels every round): itself, or a lighter copy."""
        return self


@dataclass(frozen=True)
class HostRound:
    """A host's part of one round: the devices' instructions and coefficients, and the per-upload
    stages in order. Small: it travels to every host every round."""

    round_num: int
    spec: dict[str, tuple[tuple[int, ...], str]]
    stages: tuple[Stage, ...] = ()
    accumulate: str = "sum"
    coefficients: dict[int, float] = field(default_factory=dict)  # c_i; a device left out: its samples
    plans: dict[int, DevicePlan] = field(default_factory=dict)
    seed: int = 0
    modulus: int = 0  # accumulate "modular": the secure sum's modulus
    # where each device's state is (the segment holding what it kept; none: it kept nothing), and
    # for a host that cannot reach the run's state folder the state itself (fedsim.engine.ray)
    state_at: dict[int, str] = field(default_factory=dict)
    carried: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def needs_global(self) -> bool:
        return any(s.needs_global for s in self.stages)

    def coefficient(self, device_id: int, samples: int) -> float:
        """c_i of a device in the sums: the round's, else its samples (FedAvg's n_i)."""
        return self.coefficients.get(device_id, float(samples))

    def plan(self, device_id: int) -> DevicePlan:
        return self.plans.get(device_id, _DEFAULT)

    def role(self, device_id: int) -> str:
        return self.plan(device_id).role

    def only(self, device_ids: Sequence[int]) -> HostRound:
        """This round cut to what one host's devices need."""
        from dataclasses import replace

        return replace(
            self,
            coefficients={d: self.coefficients[d] for d in device_ids if d in self.coefficients},
            plans={d: self.plans[d] for d in device_ids if d in self.plans},
            state_at={d: self.state_at[d] for d in device_ids if d in self.state_at},
            carried={d: self.carried[d] for d in device_ids if d in self.carried},
        )


_DEFAULT = DevicePlan()
__all__ = ["HONEST", "HostRound", "Rejected", "ServerContext", "SimCost", "Stage", "StopRun", "Upload", "UploadContext"]
