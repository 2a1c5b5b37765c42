"""Evaluations beyond the test split: corruption robustness and few-shot linear probes."""
