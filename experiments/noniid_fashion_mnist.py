"""IID against label-skewed fleets: 100 phones on Fashion-MNIST, FedAvg, one sweep.

    python experiments/noniid_fashion_mnist.py

Compares iid, dirichlet 1.0 / 0.3 / 0.1 and classes:2 at 100 devices, each device keeping 20% of its
own data as a test split so the spread of per-device accuracy shows who the global model serves.
Prints the table (also saved as report.md) and writes accuracy.png and device_spread.png.
"""

from datetime import datetime
from pathlib import Path

import fedsim
from fedsim.analysis import plot, report

# ---- settings ---------------------------------------------------------------------------------
partitions = ["iid", "dirichlet:1.0", "dirichlet:0.3", "dirichlet:0.1", "classes:2"]
devices = 100  # phones; 600 images each on average
rounds = 30  # iid reaches ~0.81 (on 80% of the data); enough for the skewed fleets to show their gap
device_test_fraction = 0.2  # each phone's own test split, for per-device accuracy
min_samples = 10  # Dirichlet draws are repeated until every phone has at least this many images
seed = 0
out = Path(f"results/sweeps/noniid_fashion_mnist/{datetime.now():%Y%m%d-%H%M%S}")

# ---- run --------------------------------------------------------------------------------------
base = fedsim.Config(
    rounds=rounds,
    device_test_fraction=device_test_fraction,
    min_samples=min_samples,
    seed=seed,
    name="noniid_fashion_mnist",
)
fedsim.sweep(base, devices=[devices], partitions=partitions, seeds=[seed], out=out)

# ---- look at it -------------------------------------------------------------------------------
table = report(out)
(out / "report.md").write_text(table + "\n")
print(table)
for path in plot(out):
    print(f"wrote {path}")
