"""Decoding with key/value caches: the caches' update and attention over them."""
