"""fyp: a self-hosted For You feed engine with region-pinned user data."""

__version__ = "0.1.0"
