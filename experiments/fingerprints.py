"""Fixed-seed fingerprints: run a list of small configurations (toy images, the real TFLite artifact,
in-process hosts) and hash what each leaves (every column of the rounds and devices tables that is
not a wall-clock measurement, global.ckpt, the server state), so that a change meant to keep
results can be checked bit for bit against the code before it.

    python experiments/fingerprints.py --save before.json     # on the code before the change
    python experiments/fingerprints.py --compare before.json  # on the code after it

Columns are hashed one by one (sorted by round and device), so a difference names the column. A
column that exists on one side only is listed, not counted as a difference in the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fedsim

# measured on this machine, so never the same twice: left out of the hashes
WALL = {"wall_s", "hosts_s", "aggregate_s", "evaluate_s", "elapsed_s", "train_s", "host", "secagg_unmask_s"}
BASE = dict(dataset="toy_images", toy_samples=30, devices=8, rounds=3, seed=3)
LATENCY = {"restore": 60.0, "train": 25.0, "save": 50.0}

CONFIGS: dict[str, dict] = {
    "fedavg": {},
    "fedavg-2hosts": {"_hosts": 2},
    "fedavgm": {"strategy": "fedavgm"},
    "fedadam": {"strategy": "fedadam"},
    "fedyogi": {"strategy": "fedyogi"},
    "fedadagrad": {"strategy": "fedadagrad"},
    "qfedavg": {"strategy": "qfedavg"},
    "fedprox": {"strategy": "fedprox", "mu": 0.1},
    "scaffold": {"strategy": "scaffold"},
    "scaffold-2hosts": {"strategy": "scaffold", "_hosts": 2},
    "fedmedian": {"strategy": "fedmedian"},
    "trimmedmean": {"strategy": "trimmedmean", "trim": 0.2},
    "krum": {"strategy": "krum", "assumed_byzantine": 1},
    "multikrum": {"strategy": "multikrum", "assumed_byzantine": 1},
    "bulyan": {"strategy": "bulyan", "assumed_byzantine": 1},
    "signflip": {"strategy": "fedmedian", "byzantine": 0.25, "attack": "signflip"},
    "gaussian": {"byzantine": 0.25, "attack": "gaussian"},
    "labelflip": {"byzantine": 0.25, "attack": "labelflip"},
    "alie": {"strategy": "trimmedmean", "trim": 0.3, "byzantine": 0.25, "attack": "alie"},
    "clip": {"clip_update_norm": 0.3},
    "maxnorm": {"max_update_norm": 0.45},
    "deadline-drop": {"fleet": "phones", "_latency": True, "deadline": 1.6},
    "deadline-partial": {"fleet": "phones", "_latency": True, "deadline": 1.6, "straggler": "partial"},
    "bf16": {"compress": "bf16"},
    "q4-bf16down": {"compress": "q4", "compress_down": "bf16"},
    "q8-rotate-entropy": {"compress": "q8", "rotate": True, "compress_entropy": True},
    "topk": {"compress": "topk:0.1", "per_round": 5, "rounds": 4},
    "topk-2hosts": {"compress": "topk:0.1", "per_round": 5, "rounds": 4, "_hosts": 2},
    "fedbuff-stale": {
        "mode": "async",
        "fleet": "skewed",
        "_latency": True,
        "concurrency": 4,
        "buffer": 2,
        "max_staleness": 1,
        "rounds": 6,
    },
    "fedbuff-q4": {
        "mode": "async",
        "fleet": "phones",
        "_latency": True,
        "concurrency": 4,
        "buffer": 2,
        "compress": "q4",
        "rounds": 5,
    },
    "dp-adaptive": {"dp_clip": 1.0, "dp_noise_multiplier": 0.5, "dp_clip_quantile": 0.5},
    "ldp": {"ldp_epsilon": 8.0},
    "secaggplus": {"secagg": "secaggplus"},
    "local-eval": {"device_test_fraction": 0.25, "eval_every": 2},
    "poisson": {"sampling": "poisson", "per_round": 4},
}


def digest(values: object) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def column_hashes(frame, keys: list[str]) -> dict[str, str]:
    frame = frame.sort_values(keys).reset_index(drop=True)
    out = {}
    for c in frame.columns:
        if c in WALL or c.endswith("_host_s"):  # (a stage's seconds on the hosts)
            continue
        col = frame[c]
        if col.dtype.kind == "f":
            values = [None if np.isnan(v) else float(v).hex() for v in col.to_numpy(np.float64)]
        else:
            values = [None if v is None or v != v else str(v) for v in col.tolist()]
        out[c] = digest(values)
    return out


def fingerprint(name: str, spec: dict, folder: Path) -> dict:
    settings = {**BASE, **{k: v for k, v in spec.items() if not k.startswith("_")}}
    if spec.get("_latency"):
        latency = folder / "latency.json"
        latency.write_text(json.dumps(LATENCY))
        settings["latency"] = str(latency)
    engine = fedsim.LocalEngine(spec.get("_hosts", 1))
    run = fedsim.run(engine=engine, out=str(folder / name), progress=False, **settings)
    out = {
        "rounds": column_hashes(run.rounds, ["round"]),
        "devices": column_hashes(run.devices, ["round", "device_id"]),
    }
    out["global.ckpt"] = hashlib.sha256((run.path / "global.ckpt").read_bytes()).hexdigest()[:16]
    state = run.path / "server_state.npz"
    if state.is_file():
        with np.load(state) as saved:
            out["server_state"] = digest({k: saved[k].tobytes().hex() for k in sorted(saved.files)})
    return out


def compare(before: dict, after: dict) -> list[str]:
    problems = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            problems.append(f"{name}: not run")
            continue
        for part in ("global.ckpt", "server_state"):
            if old.get(part) != new.get(part):
                problems.append(f"{name}: {part} differs")
        for table in ("rounds", "devices"):
            a, b = old[table], new[table]
            for c in sorted(set(a) & set(b)):
                if a[c] != b[c]:
                    problems.append(f"{name}: {table}.{c} differs")
            only = sorted(set(a) ^ set(b))
            if only:
                print(f"  {name}: {table} columns on one side only: {only}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", help="write the fingerprints to this JSON file")
    parser.add_argument("--compare", help="compare with fingerprints saved earlier")
    parser.add_argument("--only", help="comma-separated configuration names")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CONFIGS)
    found: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            began = time.perf_counter()
            found[name] = fingerprint(name, CONFIGS[name], Path(tmp))
            print(f"{name:20s} ckpt {found[name]['global.ckpt']}  ({time.perf_counter() - began:.1f} s)", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(found, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        problems = compare({k: v for k, v in before.items() if k in found}, found)
        print("\n".join(problems) if problems else f"identical: {len(found)} configurations")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
