"""Evaluation and decisions: the paper's metrics, zero-shot evaluation, calibration, reports."""
