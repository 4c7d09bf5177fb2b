"""IID against label-skewed fleets: 100 phones on Fashion-MNIST, FedAvg, one sweep.

    python experiments/noniid_fashion_mnist.py

Compares iid, dirichlet 1.0 / 0.3 / 0.1 (per-class, NIID-Bench's form, and 0.1 per device, Hsu et
al.'s), classes:2 as NIID-Bench defines "#C=2" (the default, first-deterministic) and fedsim's earlier
cyclic classes:2, at 100 devices, each device keeping 20% of its own data as a test split so the
spread of per-device accuracy shows who the global model serves. The table gives each run's label
skew too (fedsim.data.skew: groups of devices that share labels, mean label entropy, mean EMD to the
global mix). Writes results/workloads/noniid_fashion_mnist.md / .csv and the sweep's plots.
"""

from datetime import datetime
from pathlib import Path

import fedsim
from fedsim.report.analysis import plot, summary
from fedsim.report.tables import publish

# ---- settings ---------------------------------------------------------------------------------
partitions = [
    "iid",
    "dirichlet:1.0",
    "dirichlet:0.3",
    "dirichlet:0.1",
    "dirichlet:0.1:device",
    "classes:2",
    "classes:2:cyclic",
]
devices = 100  # phones; 600 images each on average
rounds = 30  # iid reaches ~0.81 (on 80% of the data); enough for the skewed fleets to show their gap
device_test_fraction = 0.2  # each phone's own test split, for per-device accuracy
min_samples = 10  # every phone holds at least this many images (NIID-Bench's minimum)
seed = 0
out = Path(f"results/sweeps/noniid_fashion_mnist/{datetime.now():%Y%m%d-%H%M%S}")
published = Path("results/workloads")

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
columns = [
    "partition",
    "final_accuracy",
    "device_acc_p10",
    "device_acc_mean",
    "device_acc_p90",
    "label_groups",
    "label_entropy",
    "emd_mean",
    "median_round_s",
]
specs = [fedsim.Config(partition=p).partition_spec for p in partitions]  # as the runs record them
table = summary(out)[columns].set_index("partition").loc[specs]
publish(table, published, "noniid_fashion_mnist", index=True, floatfmt=".4f")
for path in plot(out):
    print(f"wrote {path}")
