"""Privacy accounting with Google's dp-accounting library (as pfl-research does): each round of DP-FedAvg
is described as a DP event, a sampled Gaussian mechanism, and the library composes the rounds and
converts to (epsilon, delta). fedsim computes nothing by hand; it records what the library says.

The events, by how devices are sampled (fedsim.experiment.config's --sampling):
- fixed: a uniformly random cohort of m of the N devices each round, "replace one device" neighbouring
  (N is public). Replacing one device's clipped update moves the sum by up to 2C, so the Gaussian's
  multiplier relative to that sensitivity is z / 2: SampledWithoutReplacementDpEvent(N, m,
  GaussianDpEvent(z / 2)), RDP only (Wang, Balle and Kasiviswanathan 2019);
- poisson: each device joins with probability q = m / N, "add or remove one device" (sensitivity C):
  PoissonSampledDpEvent(q, GaussianDpEvent(z)), RDP or PLD.
m is the noise cohort (--dp-noise-cohort, pfl-research's trick of training a cohort and adding the noise
of a larger one), else the cohort selected each round.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ACCOUNTANTS = ("rdp", "pld")


@functools.lru_cache(maxsize=4096)
def _one_round_rdp(a: Accountant) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(orders, RDP of one round): composing t rounds is t times it, as the library itself composes."""
    accountant = a.fresh()
    accountant.compose(a.event(1))
    return tuple(accountant.orders), tuple(accountant.rdp)


@functools.lru_cache(maxsize=4096)
def _epsilon(a: Accountant, rounds: int) -> float:
    if a.kind == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        orders, rdp = _one_round_rdp(a)
        return float(rdp_privacy_accountant.compute_epsilon(orders, rounds * np.array(rdp), a.delta)[0])
    accountant = a.fresh()
    accountant.compose(a.event(rounds))
    return float(accountant.get_epsilon(a.delta))


@dataclass(frozen=True)
class Accountant:
    kind: str  # rdp or pld
    population: int  # N, the devices that could be sampled
    cohort: int  # m, devices sampled per round (the noise cohort, when simulated larger)
    sampling: str  # fixed or poisson
    noise_multiplier: float  # z: noise std on the sum / the clip norm C
    delta: float

    def event(self, rounds: int) -> Any:
        import dp_accounting as dpa

        if self.sampling == "poisson":
            one = dpa.PoissonSampledDpEvent(self.cohort / self.population, dpa.GaussianDpEvent(self.noise_multiplier))
        else:
            gaussian = dpa.GaussianDpEvent(self.noise_multiplier / 2)
            one = dpa.SampledWithoutReplacementDpEvent(self.population, self.cohort, gaussian)
        return dpa.SelfComposedDpEvent(one, rounds)

    def fresh(self) -> Any:
        """An empty accountant of this kind and neighbouring relation."""
        import dp_accounting as dpa
        from dp_accounting.pld import pld_privacy_accountant
        from dp_accounting.rdp import rdp_privacy_accountant

        relation = dpa.NeighboringRelation
        if self.kind == "pld":
            return pld_privacy_accountant.PLDAccountant(relation.ADD_OR_REMOVE_ONE)
        one = relation.ADD_OR_REMOVE_ONE if self.sampling == "poisson" else relation.REPLACE_ONE
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=one)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at `delta` after `rounds` rounds (0 before any; inf without noise)."""
        if rounds <= 0:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        return _epsilon(self, rounds)

    def calibrated(self, target_epsilon: float, rounds: int) -> Accountant:
        """This accountant with the smallest noise multiplier whose epsilon after `rounds` rounds is at
        most `target_epsilon` (dp-accounting's calibrate_dp_mechanism)."""
        import dataclasses

        from dp_accounting import mechanism_calibration as calibration

        def event(z: float) -> Any:
            return dataclasses.replace(self, noise_multiplier=z).event(rounds)

        # the search tries noise far too small, where the library warns (through absl's logger) that an
        # RDP order did not converge and is excluded; those trials are rejected anyway, so the warnings
        # say nothing about the result
        quiet = logging.getLogger("absl")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            z = calibration.calibrate_dp_mechanism(
                self.fresh, event, target_epsilon, self.delta, calibration.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4
            )
        finally:
            quiet.setLevel(level)
        # calibration stops within `tol` of the optimum on either side: round up until under the target
        while dataclasses.replace(self, noise_multiplier=z).epsilon(rounds) > target_epsilon:
            z *= 1.0005
        return dataclasses.replace(self, noise_multiplier=float(z))
