"""Offline evaluation: datasets, protocols, metrics, baselines, and the harness comparing them."""
