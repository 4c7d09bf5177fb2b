"""The small CNN of the non-IID literature on Fashion-MNIST, every phone running the real artifact.

    python experiments/cnn_fashion_mnist.py

conv 6@5x5 -> max-pool 2 -> conv 16@5x5 -> max-pool 2 -> dense 120 -> dense 84 -> 10 (`--model cnn`),
FedAvg over 10 devices with IID shards, 1 local epoch of batch-32 SGD per round. The same as
`fedsim run --model cnn --devices 10 --rounds 20`. Writes the rounds table and a summary row to
results/workloads/cnn_fashion_mnist.csv / .md.
"""

import fedsim
from fedsim.report.analysis import workload_row, write_workload

# ---- settings ---------------------------------------------------------------------------------
devices = 10  # 6,000 images per phone: the usual "10 clients, IID" setting
rounds = 20  # the CNN passes 0.87 test accuracy within these
local_epochs = 1
batch_size = 32
lr = 0.05  # SGD on the device (--device-optimizer sgd)
seed = 0

# ---- run --------------------------------------------------------------------------------------
run = fedsim.run(
    devices=devices,
    rounds=rounds,
    model="cnn",
    local_epochs=local_epochs,
    batch_size=batch_size,
    lr=lr,
    seed=seed,
    name="cnn_fashion_mnist",
)

# ---- look at it -------------------------------------------------------------------------------
print(run.rounds[["round", "test_accuracy", "test_loss", "train_loss", "wall_s"]].to_string(index=False))
row = workload_row(run, f"fedsim run --model cnn --devices {devices} --rounds {rounds}")
print(f"\nwrote {write_workload(row, run.rounds, 'results/workloads', 'cnn_fashion_mnist')}")
print(f"results in {run.path}")
