"""Data handling: item checks and imports into the run format."""
