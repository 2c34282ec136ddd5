"""Ray Tune sweeps: trials from the spec grid, their runs, and their results."""
