"""Data layer: model zoo, input pre-processing and synthetic samples with ground truth."""
