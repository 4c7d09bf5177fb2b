"""Synchronous rounds: select -> plan -> run on devices -> reduce -> server stages -> apply ->
evaluate -> record, on the round core every loop shares (fedsim.loop.core). No TensorFlow and no
Ray here."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from fedsim.clock.clock import SimOutcome
from fedsim.core import seeded
from fedsim.engine.base import DeviceReport, RoundResult
from fedsim.loop.core import Recorder, Resume, RoundCore, RoundFailedError, RoundRecord, Stamps
from fedsim.loop.rows import NAN, device_row
from fedsim.pipeline.base import HostRound, ServerContext
from fedsim.strategies.base import DevicePlan, reduce_partials

__all__ = ["Coordinator", "Recorder", "Resume", "RoundFailedError", "RoundRecord", "select_devices"]


def select_devices(
    num_devices: int,
    per_round: int,
    seed: int,
    round_num: int,
    among: np.ndarray | None = None,
    poisson: bool = False,
    compiled: bool = False,
) -> list[int]:
    """The seeded choice of devices for a round; all of them when per_round covers them. `among`:
    the ids to choose from (the simulated clock's available devices), else every device. `poisson`:
    each device joins independently with probability per_round / devices (Poisson sampling), so the
    round's size varies. `compiled`: numpy's draw compiled (fedsim.core.seeded), the same choice."""
    pool = np.arange(num_devices) if among is None else np.asarray(among)
    if poisson:
        rng = np.random.default_rng([seed, round_num, 0x9015])
        return [int(d) for d in pool[rng.random(len(pool)) < per_round / num_devices]]
    if per_round >= len(pool):
        return [int(d) for d in pool]
    picked = seeded.choice((seed, round_num, 0x5E1EC7), len(pool), per_round, compiled)
    return sorted(pool[picked].tolist())


class Coordinator(RoundCore):
    """Synchronous rounds: each waits for its cohort."""

    @property
    def poisson(self) -> bool:
        """Each device joins a round with probability per_round / devices (--sampling poisson)."""
        return self.run_context.sampling == "poisson"

    def run_round(self, round_num: int) -> RoundRecord:
        self.pipeline.before_round(round_num)  # a stage may end the run here (StopRun)
        start = time.perf_counter()
        outcomes: dict[int, SimOutcome] = {}
        unavailable: list[int] = []
        sim_round = NAN
        run = self.settings
        device_checkpoint = self._broadcast()  # what the devices restore (the server's, unless encoded)
        sent = self.pipeline.download_bytes(len(device_checkpoint), self.flat.size)
        if self.clock is None:
            selected = select_devices(run.devices, run.devices_per_round, run.seed, round_num, poisson=self.poisson)
            run_ids = selected
            cost = self.pipeline.sim_cost(len(selected), self.flat.size)
        else:
            selected, unavailable, want = self._select_available(round_num)
            cost = self.pipeline.sim_cost(len(selected), self.flat.size)
            up = self.pipeline.upload_bytes(self.run_context.upload_bytes, self.flat.size)
            outcomes, sim_round = self.clock.plan(round_num, selected, self.run_context.samples, want, sent, up, cost)
            # devices whose outcome is known before they run (dropped, too late) cost no host time
            run_ids = [d for d in selected if outcomes[d].status == "run"]
        plans, coefficients = self.plan(round_num, run_ids)
        for d, o in outcomes.items():
            if o.status == "run" and o.steps is not None:  # partial work by the deadline: a step budget
                plans[d] = replace(plans.get(d) or DevicePlan(), steps=o.steps)
        work = self.work(round_num, run_ids, plans, coefficients, self.accumulate)
        result = self._run_on_hosts(round_num, selected, run_ids, work, device_checkpoint)
        hosts_done = time.perf_counter()
        self.states.absorb(r.device_id for r in result.reports)  # what the devices keep is theirs now
        self.states.forget_pending()
        reports = list(result.reports)
        samples = self.run_context.samples
        reports += [DeviceReport(d, -1, int(samples[d]), o.status) for d, o in outcomes.items() if o.status != "run"]
        reports += [DeviceReport(d, -1, int(samples[d]), "unavailable") for d in unavailable]
        device_rows = [
            device_row(round_num, r, plans.get(r.device_id), outcomes.get(r.device_id))
            for r in sorted(reports, key=lambda r: r.device_id)
        ]
        if result.partials:
            ok = tuple(r["device_id"] for r in device_rows if r["status"] == "ok")
            gone = tuple(sorted(set(selected) - set(ok)))
            ctx = ServerContext(round_num, self.flat, len(selected), run.seed, ok, gone)
            if self.apply(reduce_partials(result.partials), ctx):  # (not: a stage lost the round's sum)
                used = self.strategy.selected  # the updates a picking rule used (None: every accepted one)
                for r in device_rows:
                    if r["status"] == "ok":
                        r["aggregated"] = float(used is None or r["device_id"] in used)
        if self.clock is not None:  # the server's own work after the last upload (a secure sum's unmasking)
            sim_round += self.pipeline.server_seconds()
        stamps = Stamps(start, hosts_done, time.perf_counter())
        # devices with a test split of their own also score the new model
        columns = self._clocks(sim_round) | self.pipeline.host_columns(result.stage_s)
        return self.finish(round_num, device_rows, selected, len(selected), stamps, sent, plans, cost, columns)

    def _run_on_hosts(
        self, round_num: int, selected: list[int], run_ids: list[int], work: HostRound, checkpoint: bytes
    ) -> RoundResult:
        """The engine's answer for the round; too few reports are retried once with the same selection."""
        min_devices = self.settings.min_devices
        for attempt in (1, 2):
            if not run_ids:
                return RoundResult()
            result = self.engine.run_round(round_num, checkpoint, run_ids, work)
            self.states.written(result.states)
            reported = sum(r.status != "failed" for r in result.reports)
            if reported >= min(min_devices, len(run_ids)):
                return result
            if attempt == 2:
                # every distinct cause, whole (a cut message once hid the one that mattered)
                errors = sorted({r.error for r in result.reports if r.status == "failed"})
                saved = (
                    f"rounds 1-{round_num - 1} are saved; fix the cause and continue with fedsim run --resume"
                    if round_num > 1
                    else "no round was completed; fix the cause and run the same command again"
                )
                raise RoundFailedError(
                    f"round {round_num}: {reported} of {len(selected)} selected devices reported, fewer than "
                    f"--min-devices {min_devices}, also on the retry (causes: {' | '.join(errors)}); {saved}"
                )
        raise AssertionError("unreachable")

    def _select_available(self, round_num: int) -> tuple[list[int], list[int], int]:
        """(selected, unavailable, how many to keep) on the simulated clock: only available devices are
        selected; with every device selected each round, the unavailable ones are recorded as such;
        --over-select picks more than the round keeps."""
        assert self.clock is not None
        run = self.settings
        available = self.clock.available(round_num)
        if run.devices_per_round >= run.devices:
            ids = np.arange(run.devices)
            return ids[available].tolist(), ids[~available].tolist(), int(available.sum())
        want = run.devices_per_round
        n = math.ceil(self.clock.over_select * want - 1e-9)
        among = np.flatnonzero(available)
        return select_devices(run.devices, n, run.seed, round_num, among, self.poisson), [], want

    def _clocks(self, sim_round: float) -> dict[str, float]:
        """The simulated clock's columns: this round's length and the total so far (--fleet)."""
        if not np.isnan(sim_round):
            self.sim_elapsed += sim_round
        return {"sim_round_s": sim_round, "sim_elapsed_s": self.sim_elapsed if not np.isnan(sim_round) else NAN}
