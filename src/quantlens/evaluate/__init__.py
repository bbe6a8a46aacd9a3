"""Evaluation: task metrics and output distances."""
