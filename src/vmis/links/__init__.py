"""Guest links: one kind of guest agent each, behind vmis.services.link's interface.

The host's sessions open links through a :class:`~vmis.services.link.GuestKind`;
the host halves of the services talk to guests only through the
:class:`~vmis.services.link.GuestLink` it returns. See docs/architecture.md.
"""
