"""Host-side accumulators of the aggregation pipeline: a running sum for rules linear in the updates,
the updates themselves for order statistics, and a modular sum of integer vectors for secure
aggregation. Each also adds up the counts the pipeline's stages keep per upload. numpy (and, for
FedBuff's stale updates, one compiled loop: fedsim.strategies.kernels)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.strategies.base import Aggregate


class _Counts:
    def __init__(self) -> None:
        self.extras: dict[str, float] = {}

    def count_in(self, counts: Mapping[str, float] | None) -> None:
        for key, value in (counts or {}).items():
            self.extras[key] = self.extras.get(key, 0.0) + value


class PartialSum(_Counts):
    """A host's running sum_i c_i * w_i (float64, one flat vector), total c_i and count.

    Updates that share a coefficient (IID shard sizes differ by at most one sample, so FedAvg sees
    one or two values) are first summed unscaled: a float64 += float32 instead of a multiplication
    and an addition, and each group is scaled once at the end. At most `max_groups` groups are kept
    (each holds a float64 copy of the model); other coefficients are scaled at once. The product is
    always formed in float64: a float32 product would round away the low bits and make the result
    depend on how devices are grouped into hosts.
    """

    def __init__(self, max_groups: int = 4) -> None:
        super().__init__()
        self.max_groups = max_groups
        self.groups: dict[float, np.ndarray] = {}
        self.scaled: np.ndarray | None = None
        self.total, self.count = 0.0, 0

    def add(
        self,
        flat: np.ndarray,
        coefficient: float,
        device_id: int = -1,
        samples: int = 0,
        start_loss: float = float("nan"),
        steps: int = -1,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        group = self.groups.get(coefficient)
        if group is not None:
            np.add(group, flat, out=group)
        elif len(self.groups) < self.max_groups:
            self.groups[coefficient] = flat.astype(np.float64)
        elif self.scaled is None:
            self.scaled = np.multiply(flat, coefficient, dtype=np.float64)
        else:
            np.add(self.scaled, np.multiply(flat, coefficient, dtype=np.float64), out=self.scaled)
        self.total += coefficient
        self.count += 1
        self.count_in(counts)

    def add_moved(
        self, row: np.ndarray, start: np.ndarray, weight: float, current: np.ndarray, coefficient: float
    ) -> None:
        """`add` of the update `current + weight * (row - start)` (float64; FedBuff's stale update moved
        onto the current model), formed and added in one compiled pass: the same sums as
        `add(np.subtract(row, start, dtype=np.float64) * weight + current, coefficient)`."""
        from fedsim.strategies import kernels  # (numba: imported by the runs that have stale updates)

        group = self.groups.get(coefficient)
        if group is not None:
            how, out = kernels.ADD, group
        elif len(self.groups) < self.max_groups:
            how, out = kernels.SET, np.empty(row.size, np.float64)
            self.groups[coefficient] = out
        elif self.scaled is None:
            how, out = kernels.SET_SCALED, np.empty(row.size, np.float64)
            self.scaled = out
        else:
            how, out = kernels.ADD_SCALED, self.scaled
        kernels.add_moved(out, how, row, start, float(weight), current, float(coefficient))
        self.total += coefficient
        self.count += 1

    @staticmethod
    def load_moved() -> None:
        """Load `add_moved`'s compiled loop (numba's import, its cached code) ahead of the first call."""
        from fedsim.strategies import kernels

        one = np.zeros(1, np.float32)
        kernels.add_moved(np.zeros(1), kernels.ADD, one, one, 1.0, np.zeros(1), 1.0)

    def partial(self) -> Aggregate:
        """The host's share; once: each group is scaled in place and the sum formed in the first one
        (fresh arrays of the model's size cost a host ~0.1 ms a call in page faults, in small rounds)."""
        acc = self.scaled
        for coefficient, group in sorted(self.groups.items()):
            product = np.multiply(group, coefficient, out=group)
            acc = product if acc is None else np.add(acc, product, out=acc)
        self.groups, self.scaled = {}, None
        return Aggregate(self.count, self.total, weighted_sum=acc, extras=dict(self.extras))


class Stack(_Counts):
    """A host's accepted updates kept whole (copies of the flat vectors, float32) for rules that need
    every update: medians, trimmed means, Krum, q-FedAvg, FedBuff, and attacks that read the honest
    updates. With a `capacity` (the call's devices) each update is copied once, into its row of one
    block that `partial` hands on as it is, instead of copied and then stacked."""

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self.block: np.ndarray | None = None  # capacity rows; the first len(rows) hold the updates, in order
        self.in_block = True  # no update went elsewhere
        self.rows: list[np.ndarray] = []
        self.ids: list[int] = []
        self.samples: list[int] = []
        self.losses: list[float] = []
        self.steps: list[int] = []
        self.total = 0.0

    def add(
        self,
        flat: np.ndarray,
        coefficient: float,
        device_id: int = -1,
        samples: int = 0,
        start_loss: float = float("nan"),
        steps: int = -1,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        self.rows.append(self._copy(flat))  # a copy: readers reuse their vector
        self.ids.append(device_id)
        self.samples.append(samples)
        self.losses.append(start_loss)
        self.steps.append(steps)
        self.total += coefficient
        self.count_in(counts)

    def _copy(self, flat: np.ndarray) -> np.ndarray:
        """`flat` as float32, copied into the block's next row where it fits, else on its own."""
        i = len(self.rows)
        if self.in_block and i < self.capacity:
            if self.block is None:
                self.block = np.empty((self.capacity, np.size(flat)), np.float32)
            if self.block.shape[1] == np.size(flat):
                self.block[i] = np.ravel(flat)
                return self.block[i]
        self.in_block = False
        return np.array(flat, dtype=np.float32)

    @property
    def count(self) -> int:
        return len(self.rows)

    def partial(self) -> Aggregate:
        return Aggregate(
            self.count,
            self.total,
            rows=self.block[: self.count] if self.in_block and self.block is not None else np.stack(self.rows),
            device_ids=np.array(self.ids, np.int64),
            samples=np.array(self.samples, np.int64),
            start_losses=np.array(self.losses, np.float64),
            steps=np.array(self.steps, np.int64),
            extras=dict(self.extras),
        )


class ModularSum(_Counts):
    """A host's share of a secure sum: the uploads' integer vectors added modulo `modulus` (what the
    server of a secure aggregation protocol learns: the sum, wrapped as the protocol's arithmetic
    wraps it, and nothing of any single upload)."""

    def __init__(self, modulus: int) -> None:
        super().__init__()
        self.modulus = modulus
        self.acc: np.ndarray | None = None
        self.total, self.count = 0.0, 0

    def add(
        self,
        vector: np.ndarray,
        coefficient: float,
        device_id: int = -1,
        samples: int = 0,
        start_loss: float = float("nan"),
        steps: int = -1,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        values = np.asarray(vector, np.uint64)
        self.acc = values % self.modulus if self.acc is None else (self.acc + values) % self.modulus
        self.total += coefficient
        self.count += 1
        self.count_in(counts)

    def partial(self) -> Aggregate:
        return Aggregate(self.count, self.total, modular_sum=self.acc, modulus=self.modulus, extras=dict(self.extras))


def accumulator(mode: str, modulus: int = 0, capacity: int = 0) -> PartialSum | Stack | ModularSum:
    """The accumulator of a host's call (`capacity`: its devices, the most updates it can take)."""
    if mode == "sum":
        return PartialSum()
    if mode == "stack":
        return Stack(capacity)
    if mode == "modular":
        return ModularSum(modulus)
    raise ValueError(f"unknown accumulation {mode!r} (sum, stack or modular)")
