"""Filters: each removes candidates for one stated reason and returns what it removed."""
