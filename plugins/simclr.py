"""Encoders of the simclr family (being written)."""
