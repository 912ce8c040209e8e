"""Encoders of the vicreg family (being written)."""
