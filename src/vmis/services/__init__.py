"""vmis.services."""
