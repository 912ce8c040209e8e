"""Encoders of the barlow family (being written)."""
