"""Training: the builder (config -> parts), the loop, the pure steps, the train state and its
metrics, optimizers and schedules, transfer from pretrained weights, recovery, profiling,
the config check and the sweep runner."""
