"""Adversarial attacks on representations (torchattacks methods, or projected
gradient ascent on the representation itself) and the RCDM experiment around them."""
