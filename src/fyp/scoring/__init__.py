"""Scorers: one number per candidate, same length and order as the input; never drop or reorder."""
