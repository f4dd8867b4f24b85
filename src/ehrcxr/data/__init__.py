"""Everything before the tensor: database access, the synthetic source, cohort, features, images."""
