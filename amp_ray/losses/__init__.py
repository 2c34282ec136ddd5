"""Training losses: the table of every loss by name (losses/table.py, torch-free) and the pure
functions of per-response log-probs that compute them (losses/preference.py, torch)."""

from amp_ray.losses.table import LOSSES, LossKind

__all__ = ["LOSSES", "LossKind"]
