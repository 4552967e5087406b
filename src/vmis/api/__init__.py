"""vmis.api."""
