"""Host-layer halves of the data-plane services, one module per service key.

See vmis.host.services.
"""
