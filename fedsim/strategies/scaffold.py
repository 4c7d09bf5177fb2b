"""SCAFFOLD (Karimireddy et al. 2020), option II of the control-variate update.

On the device (the `control` artifact variant): every local step uses g(y) + (c - c_i), with c - c_i
sent down in the device's plan (the `Control` instruction: float32, the model's flat order) and taken
by the runtime's `restore`. Then, with x the
global weights, y_i the device's weights after its K_i steps (all its batches, or the budget a deadline
left it with --straggler partial) and eta the devices' learning rate:
  c_i+ = c_i - c + (x - y_i) / (K_i * eta)
  x    = x + server_lr * mean_i(y_i - x)        (unweighted over the round's devices, as in the paper)
  c    = c + (1 / N) * sum_i (c_i+ - c_i)       (N: every device of the fleet)
c_i+ is a function of what the device uploads (y_i) and what it was sent (c - c_i), so the server
computes it from the upload; the bytes of the device's control-variate upload are still counted. c and
the c_i of every device that has taken part are the server state, kept by device id (a device that
never ran has c_i = 0 and costs nothing): saved with every committed round, restored by --resume, and
independent of which host ran a device (a host restart loses nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.instructions import CONTROL, Instruction
from fedsim.core.settings import Section, setting
from fedsim.strategies.base import Aggregate, DevicePlan, State, Strategy


@dataclass(frozen=True)
class ScaffoldParams(Section):
    server_lr: float = setting(1.0, "the server's step on the averaged update", above=0)


@dataclass(frozen=True, eq=False)
class Control(Instruction):
    """SCAFFOLD's correction c - c_i, added to every gradient (taken by the runtime's restore). Its
    bytes travel down, and a control variate of the same size goes up with an accepted update."""

    key = "control"
    needs = (CONTROL,)
    what = "SCAFFOLD's control variates"
    correction: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def restore_inputs(self) -> dict[str, np.ndarray]:
        return {"control": self.correction}

    def bytes_down(self) -> int:
        return self.correction.nbytes

    def bytes_up(self) -> int:
        return self.correction.nbytes


class Scaffold(Strategy):
    name = "scaffold"
    Params = ScaffoldParams
    accumulate = "stack"
    instructions = (Control,)

    def __init__(self, params: Any = None, run: RunContext | None = None, **values: Any) -> None:
        super().__init__(params, **values)
        self.run = run

    def bind(self, run: RunContext) -> Scaffold:
        return Scaffold(self.params, run)

    def _run(self) -> RunContext:
        if self.run is None:
            raise ValueError("scaffold needs the devices' learning rate and steps: bind it to a run")
        return self.run

    def init(self, weights: np.ndarray) -> State:
        return {
            "c": np.zeros(weights.shape, np.float64),
            "c_ids": np.zeros(0, np.int64),
            "c_rows": np.zeros((0, weights.size), np.float32),
        }

    def resume_state(self, saved: State, weights: np.ndarray) -> State:
        if "c_devices" in saved:  # an earlier fedsim kept every device's row: keep those that are set
            dense = saved["c_devices"]
            ids = np.flatnonzero(np.any(dense != 0, axis=1)).astype(np.int64)
            saved = {"c": saved["c"], "c_ids": ids, "c_rows": dense[ids]}
        if (
            set(saved) != {"c", "c_ids", "c_rows"}
            or saved["c"].shape != weights.shape
            or (saved["c_rows"].ndim != 2 or saved["c_rows"].shape[1] != weights.size)
        ):
            raise ValueError(
                f"the saved server state holds {sorted(saved) or 'nothing'}, not scaffold's c and c_i "
                "of the model's size; it cannot continue this run"
            )
        return saved

    @staticmethod
    def _rows(state: State, ids: np.ndarray) -> np.ndarray:
        """c_i of devices `ids` (float64; zero for a device that has not taken part)."""
        known, rows = state["c_ids"], state["c_rows"]
        out = np.zeros((len(ids), rows.shape[1]), np.float64)
        pos = np.searchsorted(known, ids)
        hit = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == ids) if len(known) else pos < 0
        out[hit] = rows[pos[hit]]
        return out

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        ids = np.asarray(device_ids, np.int64)
        corrections = (state["c"] - self._rows(state, ids)).astype(np.float32)
        return {int(d): DevicePlan().given(Control(row)) for d, row in zip(ids, corrections)}

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        run = self._run()
        x = weights.astype(np.float64)
        y = aggregate.rows.astype(np.float64)
        c = state["c"]
        ids = aggregate.device_ids
        full = run.steps(aggregate.samples)
        steps = (
            np.where(aggregate.steps >= 0, np.minimum(full, aggregate.steps), full) if len(aggregate.steps) else full
        )
        c_i = self._rows(state, ids)
        c_plus = c_i - c + (x - y) / (steps.astype(np.float64) * run.lr)[:, None]
        c_new = c + (c_plus - c_i).sum(axis=0) / run.devices
        x_new = x + self.params.server_lr * (y - x).mean(axis=0)
        # the rows by id: the kept ones, with this round's devices set (or added)
        all_ids = np.union1d(state["c_ids"], ids)
        rows = np.zeros((len(all_ids), x.size), np.float32)
        rows[np.searchsorted(all_ids, state["c_ids"])] = state["c_rows"]
        rows[np.searchsorted(all_ids, ids)] = c_plus.astype(np.float32)
        return x_new.astype(weights.dtype), {"c": c_new, "c_ids": all_ids, "c_rows": rows}
