"""The signature contract of the on-device artifact, as the TFLite on-device training guide defines it."""

TRAIN = "train"  # train(x, y) -> {"loss"}
INFER = "infer"  # infer(x) -> {"output"}
SAVE = "save"  # save(checkpoint_path) -> {"checkpoint_path"}; writes a TF v1 checkpoint
RESTORE = "restore"  # restore(checkpoint_path) -> {weight name: tensor}; reads and assigns
SIGNATURES = (TRAIN, INFER, SAVE, RESTORE)

LOSS = "loss"
OUTPUT = "output"
CHECKPOINT_PATH = "checkpoint_path"

# How `save` lays the weights out in its checkpoint. "tensors": one tensor per weight, the guide's form
# (restore runs one Restore op per weight). "packed": every weight back to back in one float32 tensor
# named PACKED, so restore is one Restore op and builtin slices; the restore signature's outputs
# still name every weight with its shape, which is the layout (fedsim.checkpoint.unpack).
CHECKPOINT_FORMATS = ("packed", "tensors")
PACKED = "fedsim/packed"
