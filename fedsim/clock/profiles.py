"""Device profiles: how fast each simulated phone computes and talks, and how often it is there.

A profile per device, fixed for the run from the seed (or read from a file): compute `speed` relative
to this machine (1 = as fast as one thread here; 0.25 = four times slower), `down_kbps` / `up_kbps`
bandwidth, `availability` (the chance it can be selected in a round), `dropout` (the chance a
selected device drops out mid-round and reports nothing) and `compute_w`, its power while training
(fedsim.clock.energy: the energy model and its sources). fedsim.clock.clock turns them into time.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.clock.energy import COMPUTE_W
from fedsim.core.settings import ConfigError

PROFILE_COLUMNS = ("speed", "down_kbps", "up_kbps", "availability", "dropout")
OPTIONAL_COLUMNS = ("compute_w",)  # a fleet file may set them; fedsim.clock.energy's defaults otherwise


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
    ids: np.ndarray,
    speed: np.ndarray,
    down: np.ndarray,
    up: np.ndarray,
    availability: np.ndarray,
    dropout: np.ndarray,
    compute_w: np.ndarray | float = COMPUTE_W,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": np.asarray(ids, np.int64),
            "speed": speed,
            "down_kbps": down,
            "up_kbps": up,
            "availability": availability,
            "dropout": dropout,
            "compute_w": np.broadcast_to(np.asarray(compute_w, np.float64), len(ids)),
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
    close = difflib.get_close_matches(spec, list(FLEETS), 1)
    raise FleetError(
        f"--fleet must be one of {', '.join(FLEETS)}, a FILE.csv or fedscale:CAPACITY[,BEHAVIOUR], got {spec!r}"
        + (f" (did you mean {close[0]}?)" if close else "")
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
    speed, down, up, availability, dropout = (
        pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in PROFILE_COLUMNS
    )
    watts = pd.to_numeric(table["compute_w"], errors="coerce").to_numpy(np.float64) if "compute_w" in table else None
    out = frame(
        table["device_id"].to_numpy(), speed, down, up, availability, dropout, COMPUTE_W if watts is None else watts
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


# A profile's numbers must keep simulated time finite and meaningful: a phone a million times slower
# or faster than this machine, a link under 1 bit/s or over 1 Tbit/s, 1 uW or 1 kW is an input error.
PROFILE_RANGES = {
    "speed": (1e-6, 1e6),
    "down_kbps": (1e-3, 1e9),
    "up_kbps": (1e-3, 1e9),
    "compute_w": (1e-6, 1e3),
}


def check_profiles(table: pd.DataFrame, source: str) -> None:
    for column, (lo, hi) in PROFILE_RANGES.items():
        values = table[column]
        bad = table["device_id"][~((values >= lo) & (values <= hi))]
        if len(bad):
            raise FleetError(
                f"{source}: {column} must be a number from {lo:g} to {hi:g}; device(s) "
                f"{', '.join(map(str, bad.head(5)))} have {float(values[bad.index[0]])!r}"
            )
    bad = table["device_id"][~((table["availability"] > 0) & (table["availability"] <= 1))]
    if len(bad):
        raise FleetError(f"{source}: availability must be in (0, 1]; device(s) {', '.join(map(str, bad.head(5)))}")
    bad = table["device_id"][~((table["dropout"] >= 0) & (table["dropout"] < 1))]
    if len(bad):
        raise FleetError(f"{source}: dropout must be in [0, 1); device(s) {', '.join(map(str, bad.head(5)))}")
