"""Training an RCDM: data views, the feature cache, the run directory and its
checkpoints, and the training loop (single process or torchrun/DDP)."""
