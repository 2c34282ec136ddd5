"""Typed job specs: `load_spec(path, overrides)` returns a validated, immutable `JobSpec`."""

from amp_ray.spec.job import PIPELINE, JobSpec
from amp_ray.spec.load import apply_override, load_spec, validate_spec

__all__ = ["PIPELINE", "JobSpec", "apply_override", "load_spec", "validate_spec"]
