"""Selectors: re-ranking rules. Each returns a subset of its input, without duplicates."""
