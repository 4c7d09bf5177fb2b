"""Multinomial logistic regression on FedProx's Synthetic(1, 1): the standard heterogeneous workload.

    python experiments/logreg_synthetic.py

30 devices, each one generated user of Synthetic(alpha=1, beta=1) (Li et al. 2020: 60 features, 10
classes, per-device models and feature shifts, power-law sizes), naturally partitioned; FedAvg,
1 local epoch of batch-32 SGD. The same as
`fedsim run --dataset synthetic:1,1 --model logreg --devices 30 --rounds 50`. Each device keeps its
own 10% test split, so per-device accuracy is recorded too. Writes results/workloads/logreg_synthetic.csv / .md.
"""

import fedsim
from fedsim.report.analysis import workload_row, write_workload

# ---- settings ---------------------------------------------------------------------------------
devices = 30  # the paper's 30 users
rounds = 50
local_epochs = 1
batch_size = 32  # sizes are lognormal: some devices run 2 batches, some hundreds
lr = 0.05  # the default --lr, so the script equals the command in its docstring
seed = 0

# ---- run --------------------------------------------------------------------------------------
run = fedsim.run(
    dataset="synthetic:1,1",
    model="logreg",
    devices=devices,
    rounds=rounds,
    local_epochs=local_epochs,
    batch_size=batch_size,
    lr=lr,
    seed=seed,
    name="logreg_synthetic",
)

# ---- look at it -------------------------------------------------------------------------------
print(
    run.rounds[
        ["round", "test_accuracy", "test_loss", "device_acc_p10", "device_acc_mean", "device_acc_p90", "wall_s"]
    ].to_string(index=False)
)
row = workload_row(run, f"fedsim run --dataset synthetic:1,1 --model logreg --devices {devices} --rounds {rounds}")
print(f"\nwrote {write_workload(row, run.rounds, 'results/workloads', 'logreg_synthetic')}")
print(f"results in {run.path}")
