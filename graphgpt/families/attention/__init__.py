"""Fused causal attention (flash attention 2, packed or grouped-query heads, dropout) and its backward."""
