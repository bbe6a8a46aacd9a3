"""The pipeline: a `Session` built once per run and one module per stage (see the README)."""
