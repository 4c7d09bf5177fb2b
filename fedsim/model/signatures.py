"""The signature contract of the on-device artifact, as the TFLite on-device training guide defines it."""

TRAIN = "train"  # train(x, y) -> {"loss"}
INFER = "infer"  # infer(x) -> {"output"}
SAVE = "save"  # save(checkpoint_path) -> {"checkpoint_path"}; writes a TF v1 checkpoint
RESTORE = "restore"  # restore(checkpoint_path) -> {weight name: tensor}; reads and assigns
SIGNATURES = (TRAIN, INFER, SAVE, RESTORE)

LOSS = "loss"
OUTPUT = "output"
CHECKPOINT_PATH = "checkpoint_path"
