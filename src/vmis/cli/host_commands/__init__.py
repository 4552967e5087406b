"""Host commands of the data-plane services: one module per service key, each with COMMANDS.

vmis.cli.host loads a module when a command line names one of its commands
(its ``_FIRST_WORDS``); a new service's module is one more group there.
"""
