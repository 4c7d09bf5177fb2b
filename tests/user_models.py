"""A user's own model module, for `--model user_models:build` (tests put this folder on PYTHONPATH)."""


def build(task):
    """A small MLP sized from the task it receives, ending in logits (no softmax)."""
    import keras

    return keras.Sequential(
        [
            keras.Input(task.input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(24, activation="relu", name="user_hidden"),
            keras.layers.Dense(task.num_classes, name="user_logits"),
        ],
        name="user_mlp",
    )
