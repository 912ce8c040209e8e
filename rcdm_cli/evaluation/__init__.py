"""Numbers on what the pictures show: faithfulness ranks, invariance to
augmentations, linear probes, FID."""
