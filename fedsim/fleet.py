"""Device profiles and the simulated clock: how long each device's round takes on a phone.

A profile per device, fixed for the run from the seed (or read from a file): compute `speed` relative
to this machine (1 = as fast as one thread here; 0.25 = four times slower), `down_kbps` / `up_kbps`
bandwidth, `availability` (the chance it can be selected in a round) and `dropout` (the chance a
selected device drops out mid-round and reports nothing).

A device's simulated round = download + compute + upload:
  compute_s = (restore_ms + steps * train_ms + save_ms) / 1000 / speed
  comm_s    = 8 * down_bytes / (1000 * down_kbps) + 8 * up_bytes / (1000 * up_kbps)
with the artifact's per-call latencies measured once at the start of the run on this machine with one
thread (artifact.json), or pinned from a file, so the same config and seed give the same simulated
times on any machine that uses the same latency table. The wall time of the host that ran a device
never enters it. numpy and pandas only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PROFILE_COLUMNS = ("speed", "down_kbps", "up_kbps", "availability", "dropout")
STRAGGLER_POLICIES = ("drop", "partial")


from fedsim.config import ConfigError


class FleetError(ConfigError):
    """A fleet file or a round policy that cannot work; the message names the problem."""


@dataclass(frozen=True)
class ProfileSet:
    """A built-in fleet: lognormal speed and bandwidths around their medians, a slow tail, and fixed
    availability and dropout chances. See FLEETS for what each number rests on."""

    speed_median: float
    speed_sigma: float
    down_median_kbps: float
    up_median_kbps: float
    bandwidth_sigma: float
    availability: float
    dropout: float
    slow_share: float = 0.0  # share of devices that are `slow_factor` times slower in compute and uplink
    slow_factor: float = 1.0

    def draw(self, devices: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng([seed, 0xF1EE7])
        speed = self.speed_median * np.exp(self.speed_sigma * rng.standard_normal(devices))
        down = self.down_median_kbps * np.exp(self.bandwidth_sigma * rng.standard_normal(devices))
        up = self.up_median_kbps * np.exp(self.bandwidth_sigma * rng.standard_normal(devices))
        slow = rng.random(devices) < self.slow_share
        speed[slow] /= self.slow_factor
        up[slow] /= self.slow_factor
        return frame(
            np.arange(devices), speed, down, up, np.full(devices, self.availability), np.full(devices, self.dropout)
        )


# The built-in sets. Their spreads are fedsim's assumptions, stated as such, not measurements: use
# --fleet FILE.csv or FedScale's trace files (fedscale:FILE) for measured fleets. The one figure that
# rests on a published measurement is phones' dropout of 0.1: FLASH (Yang et al., "FLASH:
# Heterogeneity-Aware Federated Learning at Scale", IEEE TMC 2022; 136k smartphones) reports that
# more than 10% of selected clients fail to report.
FLEETS: dict[str, ProfileSet] = {
    # assumed: median phone at half this machine's one-thread speed, compute spread sigma 0.6 (the 5th
    # to 95th percentile about 7x apart), bandwidth median 20 / 5 Mbit/s with sigma 0.8, available
    # in 80% of rounds; dropout 0.1 (FLASH, above)
    "phones": ProfileSet(0.5, 0.6, 20_000, 5_000, 0.8, 0.8, 0.1),
    # phones with a slow tail: 20% of devices a further 10x slower in compute and uplink (assumed), for
    # deadline and over-selection experiments
    "skewed": ProfileSet(0.5, 0.6, 20_000, 5_000, 0.8, 0.8, 0.1, slow_share=0.2, slow_factor=10.0),
    # every phone alike: as fast as this machine, 20 Mbit/s down, 5 up, always there, never drops
    "uniform": ProfileSet(1.0, 0.0, 20_000, 5_000, 0.0, 1.0, 0.0),
}


def frame(
    ids: np.ndarray, speed: np.ndarray, down: np.ndarray, up: np.ndarray, availability: np.ndarray, dropout: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": np.asarray(ids, np.int64),
            "speed": speed,
            "down_kbps": down,
            "up_kbps": up,
            "availability": availability,
            "dropout": dropout,
        }
    )


def check_spec(spec: str) -> None:
    """A --fleet value that cannot name a fleet: one line, before any work."""
    if spec in FLEETS:
        return
    path = spec.removeprefix("fedscale:")
    if spec.startswith("fedscale:") or spec.endswith(".csv"):
        for part in path.split(","):
            if not Path(part).is_file():
                raise FleetError(f"--fleet {spec}: no such file {part}")
        return
    raise FleetError(
        f"--fleet must be one of {', '.join(FLEETS)}, a FILE.csv or fedscale:CAPACITY[,BEHAVIOUR], got {spec!r}"
    )


def load_fleet(spec: str, devices: int, seed: int) -> pd.DataFrame:
    """Every device's profile (device_id and PROFILE_COLUMNS, one row per device, in id order)."""
    check_spec(spec)
    if spec in FLEETS:
        return FLEETS[spec].draw(devices, seed)
    if spec.startswith("fedscale:"):
        return load_fedscale(*spec.removeprefix("fedscale:").split(",", 1), devices=devices, seed=seed)
    return load_csv(spec, devices)


def load_csv(path: str | os.PathLike[str], devices: int) -> pd.DataFrame:
    """A user's fleet file: device_id and every profile column, one row per device 0..devices-1."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise FleetError(f"--fleet {path}: cannot read it as CSV ({e})") from None
    missing = [c for c in ("device_id", *PROFILE_COLUMNS) if c not in table.columns]
    if missing:
        raise FleetError(
            f"--fleet {path}: missing column(s) {', '.join(missing)} (needs device_id, {', '.join(PROFILE_COLUMNS)})"
        )
    ids = pd.to_numeric(table["device_id"], errors="coerce")
    unknown = table["device_id"][ids.isna() | (ids < 0) | (ids >= devices) | (ids % 1 != 0)]
    if len(unknown):
        raise FleetError(
            f"--fleet {path}: unknown device id(s) {', '.join(map(str, unknown.head(5)))} "
            f"(the fleet has devices 0-{devices - 1})"
        )
    table = table.assign(device_id=ids.astype(np.int64))
    dup = table["device_id"][table["device_id"].duplicated()]
    if len(dup):
        raise FleetError(f"--fleet {path}: device id(s) {', '.join(map(str, dup.head(5)))} appear more than once")
    absent = np.setdiff1d(np.arange(devices), table["device_id"].to_numpy())
    if len(absent):
        raise FleetError(
            f"--fleet {path}: no row for device(s) {', '.join(map(str, absent[:5]))}"
            f"{' ...' if len(absent) > 5 else ''} of {devices}"
        )
    table = table.sort_values("device_id").reset_index(drop=True)
    out = frame(
        table["device_id"], *(pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in PROFILE_COLUMNS)
    )
    check_profiles(out, f"--fleet {path}")
    return out


def load_fedscale(capacity: str, behaviour: str | None = None, *, devices: int, seed: int) -> pd.DataFrame:
    """FedScale's device traces, when the user has the files (nothing is downloaded).

    capacity: the `client_device_capacity` pickle, {client: {'computation': ms per sample,
    'communication': kbit/s}}. Each device gets a seeded draw of a trace client; its speed is the
    trace's median computation over its own (the median trace phone runs as fast as this machine),
    its bandwidth the trace's, both ways. behaviour: the optional `client_behave_trace` pickle
    ({client: {'active': [t], 'inactive': [t], 'finish_time': t}}); availability is then the share
    of the trace's time the client is active. Without it every device is available; dropout is 0.
    """
    import pickle

    with open(capacity, "rb") as f:
        cap = pickle.load(f)
    if not isinstance(cap, dict) or not cap:
        raise FleetError(f"--fleet fedscale:{capacity}: not a FedScale client_device_capacity file")
    keys = sorted(cap)
    try:
        computation = np.array([float(cap[k]["computation"]) for k in keys])
        bandwidth = np.array([float(cap[k]["communication"]) for k in keys])
    except (KeyError, TypeError, ValueError):
        raise FleetError(f"--fleet fedscale:{capacity}: entries need 'computation' and 'communication'") from None
    pick = np.random.default_rng([seed, 0xFED5CA1E]).integers(0, len(keys), devices)
    speed = np.median(computation) / computation[pick]
    availability = np.ones(devices)
    if behaviour:
        with open(behaviour, "rb") as f:
            behave = pickle.load(f)
        share = {}
        for k, v in behave.items():
            active, inactive, end = (
                list(v.get("active", [])),
                list(v.get("inactive", [])),
                float(v.get("finish_time", 0)),
            )
            spans = [min(b, end) - a for a, b in zip(active, inactive + [end])]
            share[k] = min(1.0, max(sum(max(s, 0) for s in spans) / end, 1e-3)) if end > 0 else 1.0
        behave_keys = sorted(share)
        draws = np.random.default_rng([seed, 0xBE4A]).integers(0, len(behave_keys), devices)
        availability = np.array([share[behave_keys[i]] for i in draws])
    out = frame(np.arange(devices), speed, bandwidth[pick], bandwidth[pick], availability, np.zeros(devices))
    check_profiles(out, f"--fleet fedscale:{capacity}")
    return out


def check_profiles(table: pd.DataFrame, source: str) -> None:
    for column in ("speed", "down_kbps", "up_kbps"):
        bad = table["device_id"][~(table[column] > 0) | ~np.isfinite(table[column])]
        if len(bad):
            raise FleetError(
                f"{source}: {column} must be a positive number; device(s) "
                f"{', '.join(map(str, bad.head(5)))} have {table[column][bad.index[0]]!r}"
            )
    bad = table["device_id"][~((table["availability"] > 0) & (table["availability"] <= 1))]
    if len(bad):
        raise FleetError(f"{source}: availability must be in (0, 1]; device(s) {', '.join(map(str, bad.head(5)))}")
    bad = table["device_id"][~((table["dropout"] >= 0) & (table["dropout"] < 1))]
    if len(bad):
        raise FleetError(f"{source}: dropout must be in [0, 1); device(s) {', '.join(map(str, bad.head(5)))}")


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


@dataclass(frozen=True)
class Outcome:
    """One selected device's round on the simulated clock, decided before any host runs it."""

    status: str  # "run" (a host runs it), "straggler" (finished too late: discarded), "dropped"
    steps: int | None  # train steps it runs (None: all of them)
    compute_s: float
    comm_s: float
    finish_s: float  # NaN for a dropped device (it reports nothing)


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
    arrays: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.arrays = {c: self.profiles[c].to_numpy(np.float64) for c in PROFILE_COLUMNS}

    def steps(self, samples: np.ndarray) -> np.ndarray:
        return -(-np.asarray(samples, np.int64) // self.batch_size) * self.local_epochs

    def times(
        self, ids: np.ndarray, steps: np.ndarray, down_bytes: float, up_bytes: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(compute_s, comm_s) of devices `ids` running `steps` train steps each."""
        a, lat = self.arrays, self.latency_ms
        compute = (lat["restore"] + steps * lat["train"] + lat["save"]) / 1000.0 / a["speed"][ids]
        comm = 8.0 * down_bytes / (1000.0 * a["down_kbps"][ids]) + 8.0 * up_bytes / (1000.0 * a["up_kbps"][ids])
        return compute, comm

    def available(self, round_num: int) -> np.ndarray:
        """Whether each device is available in `round_num` (seeded by seed and round)."""
        rng = np.random.default_rng([self.seed, round_num, 0xA7A1])
        return rng.random(len(self.profiles)) < self.arrays["availability"]

    def drops(self, round_num: int, ids: np.ndarray) -> np.ndarray:
        """Whether each of `ids` drops out mid-round (seeded by seed, round and device)."""
        rng = np.random.default_rng([self.seed, round_num, 0xD409])
        return rng.random(len(self.profiles))[ids] < self.arrays["dropout"][ids]

    def fewest_seconds(self, samples: np.ndarray, down_bytes: float, up_bytes: float) -> float:
        """The shortest round any device could finish: all its steps (drop) or one step (partial)."""
        ids = np.arange(len(self.profiles))
        steps = np.ones(len(ids), np.int64) if self.straggler == "partial" else self.steps(samples)
        compute, comm = self.times(ids, steps, down_bytes, up_bytes)
        return float((compute + comm).min())

    def plan(
        self, round_num: int, ids: list[int], samples: np.ndarray, want: int, down_bytes: float, up_bytes: float
    ) -> tuple[dict[int, Outcome], float]:
        """Each selected device's outcome and the round's simulated length.

        Dropped devices report nothing. With --deadline, a device that cannot finish by it is a
        straggler (drop), or runs the steps that fit (partial; none fit: straggler). Of the rest the
        first `want` to finish are kept (over-selection picks more than `want`); later ones are
        stragglers. The round lasts until the last kept device finishes, or the deadline if a device
        was cut by it."""
        order = np.asarray(ids, np.int64)
        full = self.steps(samples[order])
        compute, comm = self.times(order, full, down_bytes, up_bytes)
        finish = compute + comm
        dropped = self.drops(round_num, order)
        out: dict[int, Outcome] = {}
        steps: dict[int, int | None] = {}
        cut = False
        for i, d in enumerate(order.tolist()):
            if dropped[i]:
                out[d] = Outcome("dropped", None, float(compute[i]), float(comm[i]), float("nan"))
                continue
            budget: int | None = None
            if self.deadline is not None and finish[i] > self.deadline:
                cut = True
                fit = 0
                if self.straggler == "partial":
                    fixed = (self.latency_ms["restore"] + self.latency_ms["save"]) / 1000.0 / self.arrays["speed"][d]
                    per_step = self.latency_ms["train"] / 1000.0 / self.arrays["speed"][d]
                    # (a step that ends exactly at the deadline counts, whatever the float rounding)
                    fit = int(max(0.0, math.floor((self.deadline - comm[i] - fixed) / per_step + 1e-9)))
                    fit = min(fit, int(full[i]))
                if fit < 1:
                    out[d] = Outcome("straggler", None, float(compute[i]), float(comm[i]), float(finish[i]))
                    continue
                budget = fit
                c, m = self.times(np.array([d]), np.array([fit]), down_bytes, up_bytes)
                compute[i], comm[i], finish[i] = c[0], m[0], c[0] + m[0]
            steps[d] = budget
        position = {d: i for i, d in enumerate(order.tolist())}
        candidates = sorted(steps, key=lambda d: (finish[position[d]], d))
        keep = set(candidates[:want])
        for i, d in enumerate(order.tolist()):
            if d in steps:
                status = "run" if d in keep else "straggler"
                out[d] = Outcome(status, steps[d], float(compute[i]), float(comm[i]), float(finish[i]))
        kept = [out[d].finish_s for d in keep]
        length = max(kept) if kept else 0.0
        if cut and self.deadline is not None and len(keep) < want:
            length = self.deadline  # the server waited for devices that never made it
        elif not kept and self.deadline is not None:
            length = self.deadline
        return out, float(length)
