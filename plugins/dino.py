"""Encoders of the dino family (being written)."""
