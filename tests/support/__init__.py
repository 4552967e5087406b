"""Shared test support: in-process host/guest pairs, lab fixtures, CLI runners."""
