"""Embedding rows gathered by ids, and their gradient summed into the table."""
