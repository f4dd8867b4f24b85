"""Pure functions over prediction files: metrics, fairness, statistics (no models, no torch)."""
