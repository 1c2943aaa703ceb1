"""Dropout with counter-based Philox4x32-10 masks, drawn alike by CUDA and NumPy."""
