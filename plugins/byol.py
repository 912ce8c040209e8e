"""Encoders of the byol family (being written)."""
