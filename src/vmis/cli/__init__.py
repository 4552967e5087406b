"""vmis.cli."""
