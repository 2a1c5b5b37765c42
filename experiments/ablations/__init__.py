"""Ablations: one sweep each (the grid, seeds, the table it prints), run by run_sweep."""
