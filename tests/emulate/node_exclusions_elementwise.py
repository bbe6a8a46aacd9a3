"""ONNX backend node cases of the elementwise kernels that quantlens does not run, with reasons."""

_TRAINING_DROPOUT = (
    "training_mode=true with a nonzero ratio makes Dropout random; quantlens emulates inference "
    "and rejects such nodes"
)

EXCLUSIONS: dict[str, str] = {
    "test_training_dropout": _TRAINING_DROPOUT,
    "test_training_dropout_default": _TRAINING_DROPOUT,
    "test_training_dropout_default_mask": _TRAINING_DROPOUT,
    "test_training_dropout_mask": _TRAINING_DROPOUT,
}
