"""vmis.host."""
