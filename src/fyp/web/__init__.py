"""Static web assets: the demo feed page."""
