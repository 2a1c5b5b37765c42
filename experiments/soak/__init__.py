"""Soak runs: many repeated runs that must all finish (multi-process, evaluation stress)."""
