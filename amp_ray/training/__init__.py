"""Training on Ray Train + DeepSpeed: per-worker loops that read only their config and shard."""
