"""Host commands of the data-plane services, one module per service key, each with COMMANDS."""
