"""Secure aggregation, simulated where it changes the results and the costs; no cryptography runs.

SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning")
lets the server learn only the sum of the cohort's updates: each device masks its input with pairwise
masks that cancel in the sum. SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead") has each device share keys with k neighbours of a random graph instead of
with all n - 1 others. What fedsim simulates faithfully:

- The arithmetic (Flower's SecAgg+ parameters as defaults): each device's weighted update r_i (w_i - w),
  r_i = c_i / max_j c_j, and r_i itself, are clipped to [-R, R] (--secagg-clip, 8), quantised with
  stochastic rounding (seeded per device and round) to integers in [0, 2^b - 1] (--secagg-bits, 22),
  and summed modulo 2^m (--secagg-modulus-bits, 32): the server dequantises the sum, so quantisation
  error and wrap-around (n (2^b - 1) >= 2^m) are real. Masks cancel exactly, so they are left out.
- The dropouts: devices selected but not uploading (dropped, too late) are dropouts after the key
  sharing. SecAgg needs ceil(t n) survivors (--secagg-threshold t, 0.5); SecAgg+ needs, for every
  device, ceil(t k) surviving neighbours. Too few: the round's sum is lost (recorded, the model kept).
- The cost, per device (k = n - 1 for SecAgg; for SecAgg+ --secagg-neighbours, default
  min(n - 1, ceil(2 log2 n)), Bell et al.'s O(log n)), with X25519 keys of 32 bytes:
    up:   advertise 2 keys (64 B); k encrypted share pairs (2 x 32 B shares + 28 B AEAD + 8 B ids =
          100 B each); the masked input, (P + 1) values of ceil(m / 8) bytes (instead of the
          checkpoint); k unmasking shares (32 B each)
    down: k neighbours' keys (68 B each with the id); k forwarded share pairs (100 B); k ids (4 B)
    time: k key agreements and (k + 1) mask expansions of P + 1 values, both measured on this machine
          (X25519 with `cryptography`, numpy's Philox) and divided by the device's speed; 3 more
          round trips of --secagg-rtt-ms (assumed, 100 ms) than a plain upload
  and on the server after the last upload: every dropout's k masks and every survivor's self-mask
  expanded again (the unmasking), at this machine's speed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.settings import ConfigError, Section, setting
from fedsim.pipeline.base import ServerContext, SimCost, Stage, Upload, UploadContext
from fedsim.strategies.base import Aggregate, Strategy

PROTOCOLS = ("none", "secagg", "secaggplus")
KEY, SHARE_PAIR, SHARE, ID = 32, 100, 32, 4  # bytes: an X25519 key, an encrypted share pair, a share, an id


@dataclass(frozen=True)
class SecAggSettings(Section):
    section = "secagg"
    secagg: str = setting(
        "none", "secure aggregation: secagg (all pairs share keys) or secaggplus (k neighbours)", choices=PROTOCOLS
    )
    secagg_bits: int = setting(
        22, "SecAgg: quantisation levels 2^bits per value (Flower's SecAgg+: 22)", least=1, most=62
    )
    secagg_clip: float = setting(8.0, "SecAgg: each weighted update value is clipped to [-R, R] (Flower's 8)", above=0)
    secagg_modulus_bits: int = setting(32, "SecAgg: the sum is taken modulo 2^this (Flower's 32)", least=2, most=63)
    secagg_threshold: float = setting(
        0.5,
        "SecAgg: share of the cohort (SecAgg+: of a device's neighbours) that must survive to unmask",
        above=0,
        most=1,
    )
    secagg_neighbours: int | None = setting(
        None, "SecAgg+: the neighbours each device shares keys with (default min(n - 1, ceil(2 log2 n)))", least=1
    )
    secagg_rtt_ms: float = setting(100.0, "SecAgg: assumed round trip of each extra message exchange, ms", least=0)

    def check(self) -> None:
        if self.secagg == "none":
            return
        if self.secagg_bits >= self.secagg_modulus_bits:
            raise ConfigError(
                f"--secagg-bits {self.secagg_bits} must be below --secagg-modulus-bits "
                f"{self.secagg_modulus_bits}: the sum of even two devices would wrap"
            )


def measured_costs(params: int) -> tuple[float, float]:
    """(seconds of one X25519 key agreement, seconds to expand one mask of `params` values) on this
    machine, one thread: medians of a few repeats."""
    g = np.random.Generator(np.random.Philox(0))
    masks = []
    for _ in range(5):
        start = time.perf_counter()
        g.integers(0, 2**32, params, dtype=np.uint32)
        masks.append(time.perf_counter() - start)
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        mine, theirs = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
        start = time.perf_counter()
        for _ in range(200):
            mine.exchange(theirs)
        agreement = (time.perf_counter() - start) / 200
    except ImportError:  # without `cryptography`: what it measured on fedsim's 2-core machine
        agreement = 6.3e-5
    return agreement, float(np.median(masks))


@dataclass
class SecAgg(Stage):
    name = "secagg"
    after = ("compress",)
    asynchronous = "a secure sum masks a round's cohort together"
    conflicts: ClassVar[dict[str, str]] = {
        "compress": "--compress with --secagg: a masked input takes --secagg-modulus-bits per value whatever "
        "its encoding; drop one of them",
        "screen": "--max-update-norm / --clip-update-norm with --secagg: the server sees only the sum, not each "
        "update; clip on the device with --dp-clip instead",
    }
    Settings = SecAggSettings
    where = "device"
    needs_global = True
    columns = ("secagg_survivors", "secagg_needed", "secagg_failed", "secagg_unmask_s")
    settings: SecAggSettings = field(default_factory=SecAggSettings)
    seed: int = 0
    max_weight: float = 1.0  # the round's c_max: a device's weight in the sum is c_i / c_max
    agreement_s: float = 0.0  # measured at bind: one key agreement
    mask_s: float = 0.0  # measured at bind: one mask of P + 1 values
    params: int = 0
    last: dict[str, float] = field(default_factory=dict)  # this round's survivors, threshold, outcome

    def __post_init__(self) -> None:
        self.accumulate = "modular"
        self.modulus = 2**self.settings.secagg_modulus_bits

    @classmethod
    def make(cls, settings: SecAggSettings, seed: int = 0) -> SecAgg | None:
        return None if settings.secagg == "none" else cls(settings, seed)

    @property
    def levels(self) -> int:
        return 2**self.settings.secagg_bits - 1

    def check(self, strategy: Strategy) -> None:
        if strategy.accumulate != "sum":
            raise ConfigError(
                f"--secagg with --strategy {strategy.name}: the server learns only the sum of the "
                f"updates, and {strategy.name} needs each one; use a linear strategy"
            )

    def bind(self, run: RunContext) -> None:
        self.params = run.params
        self.agreement_s, self.mask_s = measured_costs(run.params + 1)

    def coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        """Unchanged; the round's largest scales them into [0, 1] for the quantiser (r_i = c_i / c_max)."""
        self.max_weight = float(coefficients.max()) if len(coefficients) else 1.0
        return coefficients

    def for_host(self) -> SecAgg:
        return dataclasses.replace(self, last={})

    def neighbours(self, n: int) -> int:
        if self.settings.secagg == "secagg":
            return max(n - 1, 0)
        k = self.settings.secagg_neighbours or math.ceil(2 * math.log2(max(n, 2)))
        return min(k, max(n - 1, 0))

    def describe(self) -> dict[str, float | str]:
        return {
            "protocol": self.settings.secagg,
            "key_agreement_ms": self.agreement_s * 1e3,
            "mask_ms": self.mask_s * 1e3,
            "max_weight": self.max_weight,
        }

    # ---- on the device ------------------------------------------------------------------------
    def quantise(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clip to [-R, R], map to [0, 2^b - 1], round stochastically (unbiased)."""
        r = self.settings.secagg_clip
        scaled = (np.clip(values, -r, r) + r) * (self.levels / (2 * r))
        low = np.floor(scaled)
        return (low + (rng.random(scaled.shape) < scaled - low)).astype(np.uint64)

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        assert up.flat is not None and ctx.global_flat is not None
        ratio = up.coefficient / self.max_weight
        weighted = np.append((up.flat.astype(np.float64) - ctx.global_flat) * ratio, ratio)
        rng = np.random.default_rng([ctx.seed, up.device_id, ctx.round_num, 0x5EC])
        up.payload = self.quantise(weighted, rng)
        up.nbytes = self.upload_bytes(0, len(weighted) - 1)
        return up

    def upload_bytes(self, nbytes: int, params: int) -> int:
        """The masked input: P + 1 values of the modulus's width."""
        return (params + 1) * math.ceil(self.settings.secagg_modulus_bits / 8)

    def sim_cost(self, cohort: int, params: int) -> SimCost:
        k = self.neighbours(cohort)
        return SimCost(
            up_bytes=2 * KEY + k * SHARE_PAIR + k * SHARE,
            down_bytes=k * (2 * KEY + ID) + k * SHARE_PAIR + k * ID,
            compute_s=k * self.agreement_s + (k + 1) * self.mask_s,
            latency_s=3 * self.settings.secagg_rtt_ms / 1000,
        )

    # ---- on the server ------------------------------------------------------------------------
    def survived(self, cohort: int, survivors: np.ndarray, dropouts: np.ndarray, round_num: int) -> tuple[bool, int]:
        """(whether every mask can be removed, survivors needed): SecAgg needs ceil(t n) survivors;
        SecAgg+ needs ceil(t k) surviving neighbours of every device, on a seeded random graph."""
        t = self.settings.secagg_threshold
        if self.settings.secagg == "secagg":
            need = math.ceil(t * cohort)
            return len(survivors) >= need, need
        k = self.neighbours(cohort)
        need = math.ceil(t * k)
        ids = np.sort(np.concatenate([survivors, dropouts]))
        alive = np.isin(ids, survivors)
        rng = np.random.default_rng([self.seed, round_num, 0x9A4])
        order = rng.permutation(len(ids))  # a random ring; each device's neighbours are the k nearest on it
        position = np.empty(len(ids), np.int64)
        position[order] = np.arange(len(ids))
        offsets = [o for j in range(1, k // 2 + 2) for o in (j, -j)][:k]
        for p in range(len(ids)):
            neighbours = order[(position[p] + np.array(offsets, np.int64)) % len(ids)] if offsets else []
            if int(np.sum(alive[neighbours])) < need:
                return False, need
        return True, need

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate | None:
        cohort = ctx.selected
        survivors = aggregate.count
        ok, need = self.survived(
            cohort, np.asarray(ctx.survivors, np.int64), np.asarray(ctx.dropouts, np.int64), ctx.round_num
        )
        k = self.neighbours(cohort)
        unmask = (len(ctx.dropouts) * k + survivors) * self.mask_s  # dropouts' pair masks, survivors' self-masks
        self.last = {
            "secagg_survivors": float(survivors),
            "secagg_needed": float(need),
            "secagg_failed": float(not ok),
            "secagg_unmask_s": unmask,
        }
        if not ok or aggregate.modular_sum is None:
            return None
        r = self.settings.secagg_clip
        total = aggregate.modular_sum.astype(np.float64) * (2 * r / self.levels) - survivors * r
        g = ctx.global_flat.astype(np.float64)
        weight = float(total[-1])
        if not weight > 0:  # a wrapped sum can give nonsense: the round is recorded, not applied
            self.last["secagg_failed"] = 1.0
            return None
        return Aggregate(survivors, weight, weighted_sum=weight * g + total[:-1], extras=aggregate.extras)

    def server_seconds(self) -> float:
        return self.last.get("secagg_unmask_s", 0.0)

    def round_metrics(self) -> dict[str, float]:
        out, self.last = self.last, {}
        return out
