"""FedAvg on Fashion-MNIST: a fleet of phones each running the TFLite on-device training artifact.

Copy this file and edit the settings below; run it with `python experiments/fashion_mnist_fedavg.py`.
Every setting is saved with the results (config.json), so a run folder says how it was made.
"""

import fedsim

# ---- settings ---------------------------------------------------------------------------------
devices = 100  # phones in the fleet; each gets an IID shard of the 60k training images (600 each)
rounds = 10  # federated rounds; FedAvg on IID shards is near its plateau (~0.85) by then
fraction = 1.0  # share of phones that train each round; lower it to simulate partial participation
local_epochs = 1  # passes a phone makes over its shard per round
batch_size = 32  # mini-batch of the train signature
lr = 0.05  # SGD learning rate baked into the .tflite
seed = 0  # one seed drives the partition, init, selection and shuffling: same seed, same table
hosts = None  # Ray actors hosting the phones; None = one per CPU
out = None  # None = results/fashion_mnist_fedavg/<timestamp>

# ---- run --------------------------------------------------------------------------------------
config = fedsim.Config(
    devices=devices,
    rounds=rounds,
    fraction=fraction,
    local_epochs=local_epochs,
    batch_size=batch_size,
    lr=lr,
    seed=seed,
    hosts=hosts,
    out=out,
    name="fashion_mnist_fedavg",
)
run = fedsim.run(config)

# ---- look at it -------------------------------------------------------------------------------
print(run.rounds[["round", "test_accuracy", "test_loss", "train_loss", "wall_s"]].to_string(index=False))
per_device = run.devices.groupby("round")["train_s"].describe()[["mean", "50%", "max"]]
print("\nseconds a device spent in its signatures per round:\n", per_device.to_string())
print(f"\nresults in {run.path}")
