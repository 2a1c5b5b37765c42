"""Where a run executes: the device mesh and sharding rules, multi-host start-up and cluster
launchers, ahead-of-time topology checks, precision, host memory, compiler options and
preemption notices."""
