"""vmis.guest."""
