"""One module per schema revision (see vmis.host.migrations)."""
