"""Asynchronous buffered aggregation (--mode async; FedBuff: Nguyen et al., "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022) on the simulated clock.

Up to --concurrency devices train at once. A device starts from the model version current when it
starts; its arrival is its simulated finish (fedsim.clock: download, compute, upload). Every
--buffer accepted arrivals the server steps: each buffered update, `s` server steps stale, enters as
x + w(s) * (x_i - x_start) (w from --staleness; s = 0 enters as x_i itself), and the strategy applies
their weighted mean as it would a synchronous round's (FedAvg: sample-weighted). Updates staler than
--max-staleness are discarded (status "stale"). A rounds-table row is one server step.

Order and determinism: events are ordered by simulated time, ties by a seeded draw; every arrival at
one instant is handled before the freed slots are filled; slot filling k draws among the idle,
available devices with the seed and k (as a synchronous round k draws among the available ones), and
a device never starts twice on one model version. Nothing on the schedule depends on the hosts:
devices that started on a version train together (engine.submit, round key version + 1), handed out
at the server step that closes the version (or when one arrives first) and collected at the first
arrival, so the hosts train while the loop goes on; same config and seed, same tables on any host
count. Every server step saves the schedule (devices in flight, their models) with the server
state; a resumed run retrains the devices in flight from those models (the same updates).

Only strategies that accumulate a sum (rules linear in the updates, server optimisers on their mean)
apply; the pipeline's stages run as in a synchronous round (upload hooks on the hosts, server hooks at
each step), and a stage that declares it needs a round's cohort (`Stage.asynchronous`), an order
statistic or an attack that reads the honest updates is refused before the run (check).
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.checkpoint import unflatten, write_checkpoint
from fedsim.clock.clock import SimOutcome
from fedsim.core import seeded
from fedsim.engine.base import DeviceReport, RoundResult
from fedsim.loop.coordinator import select_devices
from fedsim.loop.core import RoundCore, RoundFailedError, RoundRecord, Stamps
from fedsim.loop.rows import device_row
from fedsim.loop.schedule import ScheduleSettings, staleness_weight
from fedsim.pipeline.base import ServerContext
from fedsim.strategies.aggregate import PartialSum
from fedsim.strategies.base import Aggregate, DevicePlan, KeyedRows, State

PREFIX = "async."  # the schedule's keys in a saved server state
ROUND_COLUMNS = ("staleness_mean", "devices_in_flight")
DEVICE_COLUMNS = ("start_version", "staleness", "staleness_weight")
STATUS = ("run", "dropped")  # a flight's outcome as saved


@dataclass(order=True)
class Flight:
    """A device training on the simulated clock, from `version`, until `finish`."""

    finish: float
    tie: int
    device: int
    version: int = field(compare=False)
    start: float = field(compare=False)
    outcome: SimOutcome = field(compare=False)


def _ints(f: Flight) -> list[int]:
    return [f.tie, f.version, STATUS.index(f.outcome.status), -1 if f.outcome.steps is None else f.outcome.steps]


def _times(f: Flight) -> list[float]:
    o = f.outcome
    return [f.finish, f.start, o.compute_s, o.comm_s, o.finish_s, o.energy_j]


@dataclass
class Trained:
    """A device's report and accepted update (None: rejected or failed), kept until it arrives."""

    report: DeviceReport
    row: np.ndarray | None
    plan: DevicePlan | None


@dataclass
class Batch:
    """An engine call under way: `wait` returns its result."""

    wait: Callable[[], RoundResult]
    plans: dict[int, DevicePlan]


class AsyncCoordinator(RoundCore):
    """The round core driven by FedBuff's event loop: each run_round(step) advances the simulated clock
    until server step `step` is applied."""

    state_prefixes = (*RoundCore.state_prefixes, PREFIX)

    def __init__(self, *args: Any, schedule: ScheduleSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.clock is not None, "--mode async needs --fleet (checked in fedsim.experiment.config)"
        self.clock.compiled_draws = True  # (numpy's numbers, without numpy's ~50 us a generator: one per arrival)
        schedule = schedule or ScheduleSettings()
        per_round = self.settings.devices_per_round
        self.concurrency, self.buffer_size = schedule.concurrency or per_round, schedule.buffer or per_round
        self.staleness, self.max_staleness = schedule.staleness, schedule.max_staleness
        self.t = self.last_step_t = 0.0  # simulated seconds: now, and at the last server step
        self.version = 0  # server steps applied
        self.fills = 0  # slot fillings that started a device (each draws with its own key)
        self.heap: list[Flight] = []
        self.versions: dict[int, np.ndarray] = {0: self.flat}  # models that devices in flight started from
        self.sent: dict[int, bytes] = {}  # the checkpoints devices restore, by model version
        self.started_now: set[int] = set()  # devices that started on the current version
        self.trained: dict[int, Trained] = {}
        self.pending: dict[int, Batch] = {}  # devices handed to the hosts, not yet collected
        self.buffer: list[tuple[Flight, Trained]] = []
        self.rows: list[dict[str, Any]] = []  # the devices' rows of the step under way
        self.begun = 0  # devices started since the last step
        self._sent: tuple[int, int] = (-1, 0)  # (version, bytes each starting device downloads)
        saved = {k[len(PREFIX) :]: v for k, v in (self.resumed_state or {}).items() if k.startswith(PREFIX)}
        if saved:
            self._restore(saved)

    def run_round(self, round_num: int) -> RoundRecord:
        self.pipeline.before_round(round_num)
        start = time.perf_counter()
        while True:
            if not (self.heap and self.heap[0].finish <= self.t):  # nothing else arrives now: refill
                self._fill()
            flight = heapq.heappop(self.heap)
            self.t = flight.finish
            if self._arrive(flight) and len(self.buffer) >= self.buffer_size:
                return self._step(round_num, start)

    def _fill(self) -> None:
        """Start devices in the free slots: idle, available, not yet started on this version."""
        assert self.clock is not None
        run = self.settings
        tries = 0
        while len(self.heap) < self.concurrency:
            slots = self.concurrency - len(self.heap)
            key = self.fills + 1
            busy = np.zeros(run.devices, bool)
            busy[[f.device for f in self.heap]] = True
            busy[list(self.started_now)] = True
            among = np.flatnonzero(self.clock.available(key) & ~busy)
            chosen = select_devices(run.devices, slots, run.seed, key, among, compiled=True) if len(among) else []
            self.fills = key
            if not chosen:
                tries += 1
                if self.heap or tries < 100:
                    if self.heap:
                        return  # the flights in the air will free devices
                    continue
                raise RoundFailedError(
                    f"--mode async: no device could start at {self.t:.1f} simulated s in 100 tries "
                    f"(availability, or every device already trained on model version {self.version})"
                )
            sent, up = self._sent_bytes(), self.pipeline.upload_bytes(self.run_context.upload_bytes, self.flat.size)
            cost = self.pipeline.sim_cost(len(chosen), self.flat.size)
            outcomes, _ = self.clock.plan(key, chosen, self.run_context.samples, len(chosen), sent, up, cost)
            ties = seeded.top_bits((run.seed, key, 0xA5), len(chosen), 62, compiled=True)
            for d, tie in zip(chosen, ties.tolist()):
                o = outcomes[d]
                took = o.finish_s if o.status == "run" else o.compute_s + o.comm_s  # a dropout frees its slot then
                heapq.heappush(self.heap, Flight(self.t + took, tie, d, self.version, self.t, o))
                self.started_now.add(d)
            self.begun += len(chosen)

    def _sent_bytes(self) -> int:
        """What a device starting now downloads (the current model, as the downlink encodes it)."""
        if self._sent[0] != self.version:
            made = self._checkpoint_of(self.version)  # made once: devices starting now restore it
            self._sent = (self.version, self.pipeline.download_bytes(len(made), self.flat.size))
        return self._sent[1]

    def _arrive(self, flight: Flight) -> bool:
        """Handle one arrival; True if it joined the buffer."""
        staleness = self.version - flight.version
        weight = staleness_weight(self.staleness, staleness)
        extra = {"start_version": flight.version, "staleness": staleness, "staleness_weight": weight}
        samples = int(self.run_context.samples[flight.device])
        if flight.outcome.status == "dropped":
            report = DeviceReport(flight.device, -1, samples, "dropped")
            self.rows.append(device_row(self.version + 1, report, None, flight.outcome) | extra)
            return False
        if flight.device not in self.trained:  # (the first of its engine call to arrive)
            if flight.device not in self.pending:
                self._submit(flight.version, flight.device)
            self._collect(flight.device)
        got = self.trained.pop(flight.device)
        report = got.report
        self.states.absorb([flight.device])  # what it keeps (error feedback) is its own once it arrives
        joined = False
        if report.status == "ok" and self.max_staleness is not None and staleness > self.max_staleness:
            why = f"{staleness} server steps stale, over --max-staleness {self.max_staleness}"
            report = dataclasses.replace(report, samples=samples, status="stale", error=why)
        elif report.status == "ok" and got.row is not None:
            self.buffer.append((flight, got))
            joined = True
        self.rows.append(device_row(self.version + 1, report, got.plan, flight.outcome) | extra)
        self._forget_versions()
        return joined

    def _submit(self, version: int, arriving: int | None = None, until: float = np.inf) -> None:
        """Hand the hosts, in one engine call, every device in flight (and `arriving`) that started on
        `version`, arrives by `until` and is neither trained nor handed out yet, without waiting: the
        hosts train while the loop goes on, and the result is collected when the first arrives."""
        waiting = {
            f.device for f in self.heap if f.version == version and f.outcome.status == "run" and f.finish <= until
        }
        waiting |= set() if arriving is None else {arriving}
        ids = sorted(d for d in waiting if d not in self.trained and d not in self.pending)
        if not ids:
            return
        key = version + 1
        plans, coefficients = self.plan(key, ids)
        work = self.work(key, ids, plans, coefficients, "stack")
        batch = Batch(self.engine.submit(key, self._checkpoint_of(version), ids, work), plans)
        self.pending.update(dict.fromkeys(ids, batch))

    def _collect(self, device: int) -> None:
        """Wait for the engine call that trains `device` and keep the reports of all its devices."""
        batch = self.pending[device]
        result = batch.wait()
        self.states.written(result.states)
        # each device's row as the hosts sent it (a view: the rows are only read), not restacked
        rows = {
            int(d): row for p in result.partials if p.rows is not None for d, row in zip(p.device_ids.tolist(), p.rows)
        }
        for r in result.reports:
            self.pending.pop(r.device_id, None)
            self.trained[r.device_id] = Trained(r, rows.get(r.device_id), batch.plans.get(r.device_id))

    def _step(self, step: int, start: float) -> RoundRecord:
        """Apply the buffer: one server step, recorded as the rounds table's row `step`."""
        hosts_done = time.perf_counter()
        buffered = sorted(self.buffer, key=lambda b: b[0].device)
        self.buffer = []
        ids = np.array([f.device for f, _ in buffered], np.int64)
        samples = self.run_context.samples[ids]
        coefficients = self.pipeline.coefficients(self.strategy.weights(samples))
        acc = PartialSum()
        staleness = []
        flat64 = self.flat.astype(np.float64)
        for (flight, got), c in zip(buffered, coefficients.tolist()):
            assert got.row is not None
            s = self.version - flight.version
            staleness.append(s)
            if s > 0:  # the update, weighted by its staleness, moved onto the current model (in float64)
                acc.add_moved(got.row, self.versions[flight.version], staleness_weight(self.staleness, s), flat64, c)
            else:
                acc.add(got.row, c, flight.device, int(self.run_context.samples[flight.device]))
        partial = acc.partial()
        aggregate = Aggregate(
            partial.count,
            partial.total_weight,
            weighted_sum=partial.weighted_sum,
            device_ids=ids,
            samples=samples.astype(np.int64),
            start_losses=np.array([g.report.train_loss for _, g in buffered], np.float64),
            steps=np.full(len(ids), -1, np.int64),
        )
        self._checkpoint_of(self.version)  # kept for its devices still in flight
        ctx = ServerContext(step, self.flat, len(ids), self.settings.seed, tuple(ids.tolist()))
        self.apply(aggregate, ctx)  # (a step whose aggregate a stage lost leaves the model as it was)
        self.version += 1
        self.versions[self.version] = self.flat
        self.started_now = set()
        # no device starts on that version any more: the hosts train the rest now, those that can
        # arrive before the run's last step (those after it are trained if they do arrive: none is lost)
        left = (self.settings.rounds - step) * self.buffer_size
        finishes = sorted(f.finish for f in self.heap if f.outcome.status == "run") + [np.inf]
        self._submit(self.version - 1, until=finishes[min(left, len(finishes)) - 1] if left else -np.inf)
        self._forget_versions()
        stamps = Stamps(start, hosts_done, time.perf_counter())
        rows, self.rows = self.rows, []
        for r in rows:
            r["round"] = step
        rows.sort(key=lambda r: r["device_id"])
        cost = self.pipeline.sim_cost(self.begun, self.flat.size)
        columns = {
            "staleness_mean": float(np.mean(staleness)),
            "devices_in_flight": len(self.heap),
            "sim_round_s": self.t - self.last_step_t,  # the simulated clock at this step
            "sim_elapsed_s": self.t,
        }
        self.last_step_t = self.sim_elapsed = self.t
        arrived = [r["device_id"] for r in rows]
        record = self.finish(step, rows, arrived, self.begun, stamps, self._sent[1], {}, cost, columns)
        self.begun = 0
        return record

    # ---- model versions -----------------------------------------------------------------------
    def _checkpoint_of(self, version: int) -> bytes:
        """The checkpoint devices that start on `version` restore (a stage may encode the downlink),
        made once per version while devices in flight need it."""
        if version not in self.sent and version == self.version:
            self.sent[version] = self._broadcast()
        elif version not in self.sent:
            flat = np.asarray(self.pipeline.broadcast(self.versions[version]), np.float32)
            self.sent[version] = write_checkpoint(unflatten(flat, self.spec), self.scratch)
        return self.sent[version]

    def _forget_versions(self) -> None:
        """Drop the models no device in flight or in the buffer started from."""
        keep = {self.version} | {f.version for f in self.heap} | {f.version for f, _ in self.buffer}
        self.versions = {v: flat for v, flat in self.versions.items() if v in keep}
        self.sent = {v: checkpoint for v, checkpoint in self.sent.items() if v in keep}

    # ---- saved with the server state at every step --------------------------------------------
    def _saved_state(self) -> State:
        flights = sorted(self.heap, key=lambda f: (f.finish, f.tie, f.device))  # (the heap's order, as tuples)
        versions = sorted(self.versions)
        saved = {
            "clock": np.array([self.t, self.last_step_t], np.float64),
            "counters": np.array([self.version, self.fills], np.int64),
            "started_now": np.array(sorted(self.started_now), np.int64),
            "flight_ids": np.array([f.device for f in flights], np.int64),
            "flight_ints": np.array([_ints(f) for f in flights], np.int64).reshape(-1, 4),
            "flight_times": np.array([_times(f) for f in flights], np.float64).reshape(-1, 6),
            "version_ids": np.array(versions, np.int64),
            "version_rows": KeyedRows.of(versions, [self.versions[v] for v in versions]),  # each stored once
        }
        return {**super()._saved_state(), **{PREFIX + k: v for k, v in saved.items()}}

    def _restore(self, saved: State) -> None:
        self.t, self.last_step_t = (float(x) for x in saved["clock"])
        self.version, self.fills = (int(x) for x in saved["counters"])
        self.started_now = {int(d) for d in saved["started_now"]}
        self.heap = []
        for d, ints, times in zip(saved["flight_ids"], saved["flight_ints"], saved["flight_times"]):
            tie, version, status, steps = (int(x) for x in ints)
            finish, begun, compute_s, comm_s, finish_s, energy_j = (float(x) for x in times)
            outcome = SimOutcome(STATUS[status], None if steps < 0 else steps, compute_s, comm_s, finish_s, energy_j)
            self.heap.append(Flight(finish, tie, int(d), version, begun, outcome))
        heapq.heapify(self.heap)
        self.versions = {int(v): np.array(r, np.float32) for v, r in zip(saved["version_ids"], saved["version_rows"])}
        self.versions[self.version] = self.flat
