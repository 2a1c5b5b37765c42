"""Ahead-of-time checks for TPU pods without a TPU: compile a run's programs for a topology,
report per-chip memory, FLOPs, collectives and a roofline estimate (`python -m imgcls_jax.training.fit_check` runs them for a config)."""
