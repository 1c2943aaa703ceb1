"""FP8 operands: a tensor's largest magnitude, and its E4M3 copy at a power-of-two scale."""
