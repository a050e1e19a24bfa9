"""The CLI's choices as plain strings, so that ``manualbp --help`` (and each subcommand's) imports no jax.

Each tuple repeats names that a jax-importing module defines; tests/test_cli_help.py checks that
they agree, so neither can change alone.
"""

CHECK_MODELS = ("cnn", "gpt", "gru", "lstm", "mlp", "rnn")  # manualbp.models.MODELS
VERDICTS = ("fixed", "conditioning", "error-model")  # manualbp.verify.tolerances.VERDICTS
TRAIN_MODELS = ("mlp", "cnn", "rnn", "lstm", "gru", "gpt")  # manualbp.training.zoo.MODEL_NAMES
TRAIN_DATA = ("digits", "spirals", "adding", "sort")  # manualbp.training.zoo.DATA_NAMES
OPTIMIZERS = ("adam", "momentum", "sgd")  # manualbp.training.zoo.OPTIMIZERS
