"""Rotary positions (RoPE) on queries and keys."""
