"""Benchmarks: speed, memory and compile time, side by side in one process or sitting; each
prints a table and writes a JSON (with the commit, date, machine and command inside)."""
