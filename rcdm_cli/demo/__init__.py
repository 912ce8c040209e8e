"""The offline demo: generated scenes, a tiny RCDM trained on them, and a report."""
