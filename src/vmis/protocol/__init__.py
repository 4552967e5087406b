"""vmis.protocol."""
