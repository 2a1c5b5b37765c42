"""What a run tells: metric writers (JSON lines, TensorBoard), the run report, confusion
matrices, plots, timing and FLOP counts, markdown tables."""
