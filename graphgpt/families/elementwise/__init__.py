"""Pointwise arithmetic, casts and activations, and the fused chains of them."""
