"""Backends that execute a plan: NumPy (the reference) and CUDA."""
