"""Experiments: ablations (sweeps with tables and plots), benchmarks (speed and memory, each a
table and a JSON), soak runs (long fault-tolerance loops). Run each from the repository root
as a module, e.g. `python -m experiments.benchmarks.step`; results go to experiments/results/."""
