"""Encoders of the swav family (being written)."""
