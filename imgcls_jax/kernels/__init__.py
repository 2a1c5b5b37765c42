"""Native CPU kernels that XLA:CPU lacks at speed, each with a plain-JAX twin it must match."""
