"""Guest tools of the data-plane services: one module per service key with COMMANDS.

Standard library only.
"""
