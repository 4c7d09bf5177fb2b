"""Central differential privacy, DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models"), with the privacy spent computed by dp-accounting (fedsim.pipeline.accounting).

On each device (this stage runs where the device would): its update w_i - w is clipped to L2 norm C
(--dp-clip), so no device can move the sum by more than C; with clipping, every device counts the
same (c_i = 1: the sensitivity would otherwise depend on its data). On the server, once per round,
from the run's seeded generator: Gaussian noise of std z * C on the sum of the clipped updates, and the
fixed-denominator estimator w <- w + (sum_i clip(w_i - w) + noise) / m, m the cohort the round
selected (McMahan et al.'s estimator for fixed-size cohorts; with --sampling poisson, m is its
expected size). --dp-noise-cohort M adds the noise of a cohort of M instead (std z * C * m / M:
pfl-research's noise_cohort_size) and the accountant then assumes cohorts of M.

Adaptive clipping (--dp-clip-quantile, Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping"): each round the devices also report whether their update was within C, the server
adds N(0, sigma_b^2) to that count (sigma_b = m / 20, the paper's choice) and moves C by
C <- C * exp(-eta (b - gamma)), eta = --dp-clip-lr; the update's noise multiplier is then
z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that the two releases together are a Gaussian mechanism
of multiplier z, which the accountant composes.

The guarantee is (epsilon, delta) for every device of the fleet (N = --devices), delta = 1 / N^1.1
unless --dp-delta is given; rounds.parquet records epsilon after every round (dp_epsilon).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.settings import ConfigError, Section, setting
from fedsim.pipeline.accounting import ACCOUNTANTS, Accountant
from fedsim.pipeline.base import Rejected, ServerContext, Stage, StopRun, Upload, UploadContext
from fedsim.strategies.base import Aggregate, DevicePlan, State, Strategy


@dataclass(frozen=True)
class DPSettings(Section):
    section = "dp"
    dp_clip: float | None = setting(
        None, "DP: clip each device's update to this L2 norm C (with --dp-clip-quantile: the first round's C)", above=0
    )
    dp_noise_multiplier: float | None = setting(
        None, "DP: Gaussian noise of std z * C on the sum of the clipped updates (z = 0: none)", least=0
    )
    dp_epsilon: float | None = setting(
        None, "DP: choose z so that the planned rounds end at this epsilon (instead of --dp-noise-multiplier)", above=0
    )
    dp_delta: float | None = setting(None, "DP: the guarantee's delta (default 1 / devices^1.1)", above=0, below=1)
    dp_accountant: str = setting(
        "rdp", "DP: the dp-accounting accountant (pld needs --sampling poisson)", choices=ACCOUNTANTS
    )
    dp_noise_cohort: int | None = setting(
        None, "DP: add the noise of a cohort of this many devices (pfl-research's noise_cohort_size)", least=1
    )
    dp_clip_quantile: float | None = setting(
        None, "DP: adaptive clipping toward this quantile of the update norms (Andrew et al. 2021)", above=0, below=1
    )
    dp_clip_lr: float = setting(0.2, "DP: adaptive clipping's learning rate (Andrew et al.'s 0.2)", above=0)
    dp_epsilon_budget: float | None = setting(
        None,
        "DP: stop before the round that would take epsilon past this (status budget; resume with more)",
        above=0,
        resumable=True,
    )

    @property
    def on(self) -> bool:
        return any(
            v is not None for v in (self.dp_clip, self.dp_noise_multiplier, self.dp_epsilon, self.dp_clip_quantile)
        )

    def check(self) -> None:
        if self.dp_noise_multiplier is not None and self.dp_epsilon is not None:
            raise ConfigError("--dp-noise-multiplier and --dp-epsilon both set the noise; give one of them")
        noisy = self.dp_epsilon is not None or (self.dp_noise_multiplier or 0) > 0
        if noisy and self.dp_clip is None:
            raise ConfigError(
                "DP noise needs a clip norm: add --dp-clip C (the noise is z * C; with "
                "--dp-clip-quantile, C is where adaptive clipping starts)"
            )
        if self.dp_clip_quantile is not None and self.dp_clip is None:
            raise ConfigError("--dp-clip-quantile needs --dp-clip C, the clip norm of the first round")
        if self.dp_epsilon_budget is not None and not noisy:
            raise ConfigError("--dp-epsilon-budget needs DP noise (--dp-noise-multiplier z > 0 or --dp-epsilon)")


@dataclass
class DP(Stage):
    name = "dp"
    after = ("personal",)
    asynchronous = "its accountant assumes rounds of uniformly sampled cohorts"
    Settings = DPSettings
    where = "device"  # the clip; the noise is added on the server
    needs_global = True
    columns = ("dp_epsilon", "dp_clip", "dp_noise_std")
    device_columns = ("update_norm",)
    settings: DPSettings = field(default_factory=DPSettings)
    seed: int = 0
    clip: float | None = None  # C of the coming round (adaptive clipping moves it)
    accountant: Accountant | None = None
    cohort: int = 0  # m: devices selected per round (the estimator's denominator)
    noise_scale: float = 0.0  # std of the noise on the sum, per unit of C
    count_std: float = 0.0  # adaptive clipping: std of the noise on the unclipped count
    round_num: int = 0
    next_clip: float | None = None  # adaptive clipping: C for the round after this one

    @classmethod
    def make(cls, settings: DPSettings, seed: int = 0) -> DP | None:
        return cls(settings, seed, settings.dp_clip) if settings.on else None

    def check(self, strategy: Strategy) -> None:
        if strategy.accumulate != "sum":
            raise ConfigError(
                f"DP with --strategy {strategy.name}: the noise is added to the sum of the clipped updates, "
                f"which {strategy.name} never forms (it needs every update); use a linear strategy: fedavg, "
                "fedavgm, fedadam, fedyogi, fedadagrad, fedprox"
            )

    def bind(self, run: RunContext) -> None:
        s = self.settings
        if s.dp_accountant == "pld" and run.sampling != "poisson":
            raise ConfigError(
                "--dp-accountant pld accounts for Poisson sampling only: add --sampling poisson, "
                "or use --dp-accountant rdp (exact for fixed-size cohorts)"
            )
        self.cohort = run.per_round
        noise_cohort = s.dp_noise_cohort or run.per_round
        if noise_cohort < run.per_round or noise_cohort > run.devices:
            raise ConfigError(
                f"--dp-noise-cohort must be between the cohort ({run.per_round}) and --devices "
                f"({run.devices}), got {noise_cohort}"
            )
        delta = s.dp_delta if s.dp_delta is not None else 1.0 / run.devices**1.1
        z = s.dp_noise_multiplier or 0.0
        account = Accountant(s.dp_accountant, run.devices, noise_cohort, run.sampling, z, delta)
        if s.dp_epsilon is not None:
            account = account.calibrated(s.dp_epsilon, run.rounds)
        self.accountant = account
        shrink = run.per_round / noise_cohort  # the noise of the larger cohort, on this one's sum
        z_update = account.noise_multiplier
        if s.dp_clip_quantile is not None and z_update > 0:
            self.count_std = noise_cohort / 20 * shrink  # Andrew et al.: sigma_b = m / 20
            sigma_b = noise_cohort / 20
            if 2 * sigma_b <= z_update:
                raise ConfigError(
                    f"adaptive clipping's count noise (sigma_b = {sigma_b:g}) leaves no noise budget "
                    f"for the update at z = {z_update:g}: use a larger cohort or a smaller z"
                )
            z_update = (z_update**-2 - (2 * sigma_b) ** -2) ** -0.5
        self.noise_scale = z_update * shrink

    def describe(self) -> dict[str, float | str | int]:
        a = self.accountant
        assert a is not None
        return {
            "noise_multiplier": a.noise_multiplier,
            "delta": a.delta,
            "accountant": a.kind,
            "population": a.population,
            "noise_cohort": a.cohort,
            "sampling": a.sampling,
            "update_noise_multiplier": self.noise_scale * a.cohort / max(self.cohort, 1),
        }

    def epsilon(self, rounds: int) -> float:
        assert self.accountant is not None
        return self.accountant.epsilon(rounds)

    def before_round(self, round_num: int) -> None:
        budget = self.settings.dp_epsilon_budget
        if budget is not None and (spent := self.epsilon(round_num)) > budget:
            if round_num == 1:
                raise ConfigError(
                    f"--dp-epsilon-budget {budget:g} is below one round's epsilon ({spent:.4g}): no round can run; "
                    "raise the budget, the noise (--dp-noise-multiplier) or the population"
                )
            raise StopRun(
                "budget",
                f"round {round_num} would take epsilon to {spent:.4g}, past --dp-epsilon-budget {budget:g}; "
                f"rounds 1-{round_num - 1} spent {self.epsilon(round_num - 1):.4g}; continue with a larger "
                "budget: fedsim run --resume DIR --dp-epsilon-budget B",
            )

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        self.round_num = round_num
        if self.next_clip is not None:  # adaptive clipping moved C after the last round
            self.clip, self.next_clip = self.next_clip, None

    def coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        return np.ones_like(coefficients) if self.clip is not None else coefficients

    def for_host(self) -> DP:
        return dataclasses.replace(self, accountant=None)

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        if self.clip is None:
            return up
        assert up.flat is not None and ctx.global_flat is not None
        update = up.flat - ctx.global32  # float32, as the device holds it
        norm = float(np.sqrt(np.dot(update, update)))
        if not math.isfinite(norm):
            raise Rejected(f"update norm {norm} is not finite")
        within = norm <= self.clip
        if not within:
            up.flat = (ctx.global_flat + update * (self.clip / norm)).astype(np.float32)
        up.counts["dp.within"] = up.counts.get("dp.within", 0.0) + float(within)
        up.metrics["update_norm"] = norm
        return up

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate:
        if aggregate.weighted_sum is None:
            return aggregate
        g = ctx.global_flat.astype(np.float64)
        total = aggregate.weighted_sum - aggregate.total_weight * g  # the sum of the (clipped, weighted) updates
        rng = np.random.default_rng([self.seed, ctx.round_num, 0xD9])
        if self.clip is not None and self.noise_scale > 0:
            total = total + rng.normal(0.0, self.noise_scale * self.clip, size=total.shape)
        denominator = float(self.cohort) if self.clip is not None else aggregate.total_weight
        if self.settings.dp_clip_quantile is not None and self.clip is not None:  # Andrew et al.'s update of C
            within = aggregate.extras.get("dp.within", 0.0)
            noisy = (within + (rng.normal(0.0, self.count_std) if self.count_std > 0 else 0.0)) / self.cohort
            step = math.exp(-self.settings.dp_clip_lr * (noisy - self.settings.dp_clip_quantile))
            self.next_clip = self.clip * step
        return dataclasses.replace(aggregate, weighted_sum=denominator * g + total, total_weight=denominator)

    def round_metrics(self) -> dict[str, float]:
        clip = self.clip if self.clip is not None else math.nan
        return {
            "dp_epsilon": self.epsilon(self.round_num),
            "dp_clip": clip,
            "dp_noise_std": self.noise_scale * clip / max(self.cohort, 1),
        }

    def state(self) -> State:
        """C for the next round (what adaptive clipping has moved it to)."""
        clip = self.next_clip if self.next_clip is not None else self.clip
        return {"clip": np.array([clip if clip is not None else math.nan])}

    def restore(self, state: State) -> None:
        clip = float(state["clip"][0])
        self.clip = None if math.isnan(clip) else clip
