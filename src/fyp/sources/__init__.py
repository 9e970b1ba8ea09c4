"""Candidate sources: each finds items for one viewer by one idea, and says which idea."""
