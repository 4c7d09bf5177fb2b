"""How FedAvg behaves as the fleet grows: one sweep over device counts, then a table and plots.

Run with `python experiments/sweep_devices.py`; edit the settings below. Every point is a normal run
folder under the sweep folder, and sweep.parquet joins each point's settings with its rounds.
"""

from datetime import datetime

import fedsim
from fedsim.report.analysis import plot, report

# ---- settings ---------------------------------------------------------------------------------
devices = [10, 100, 1000, 10000]  # fleet sizes; each gets the 60k training images split among it
partitions = ["iid"]  # add "dirichlet:0.1" to see label skew
seeds = [0]  # more seeds give error bars
per_round = 100  # devices per round, capped at the fleet size: rounds cost the same at every size
rounds = 10  # federated rounds per point

out = f"results/sweeps/sweep_devices/{datetime.now():%Y%m%d-%H%M%S}"

# ---- run --------------------------------------------------------------------------------------
base = fedsim.Config(rounds=rounds, per_round=per_round, name="sweep_devices")
table = fedsim.sweep(base, devices=devices, partitions=partitions, seeds=seeds, out=out)

# ---- look at it -------------------------------------------------------------------------------
print(report(out))
for path in plot(out):
    print(f"wrote {path}")
failed = table[table["status"] == "failed"]
for _, row in failed.iterrows():
    print(f"failed {row['point']}: {row['error']}")
