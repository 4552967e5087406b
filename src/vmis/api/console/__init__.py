"""The web console: a page the host manager serves at ``/`` (docs/console.md).

``assets/`` holds its HTML, CSS and JavaScript (no build step, nothing from
the internet); :mod:`vmis.api.console.routes` serves them and signs a
browser in; :mod:`vmis.api.console.sessions` keeps its sessions, which
:data:`vmis.api.access.AUTHENTICATORS` reads as one more way to present a
token. Everything the page shows it reads from the API's own routes, with
the role table and the audit log as they are.
"""
