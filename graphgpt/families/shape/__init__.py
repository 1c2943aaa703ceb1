"""Data movement without arithmetic: copies, broadcasts, transposes, slices, pads, concat."""
