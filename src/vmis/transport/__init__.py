"""vmis.transport."""
