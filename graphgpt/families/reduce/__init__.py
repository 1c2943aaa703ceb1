"""Sums over chosen axes, and many small column sums in one launch."""
