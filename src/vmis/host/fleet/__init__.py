"""Many host managers on one PostgreSQL store (docs/fleet.md).

Each manager is a *host* of the fleet: it registers itself, holds a lease it
renews, owns its VMs (runs their sessions, alone) and publishes what other
hosts show of them; a command for another host's VM is written to the store
as desired state or a request and reaches its owner through PostgreSQL's
LISTEN/NOTIFY. On SQLite the store is one host's, and this is that host.

``tables``    the fleet's tables, and the database's clock
``hosts``     this host's identity, its registration and lease; ownership of VMs
``listener``  the LISTEN connection: notifications in, catch-up on every reconnect
``reports``   what owners publish (Get-VM, service status, KVP pools) and reading it back
``requests``  requests between hosts: written, taken, applied, answered, waited for
``actions``   what a request may ask of a VM's owner
``fleet``     :class:`~vmis.host.fleet.fleet.Fleet`, the host manager's part in its fleet
``policy``    integration service policies and VM tags in the store; what they decide
``policies``  the policy commands, and this host converging its VMs to policy
``compliance`` Get-VMIntegrationServiceCompliance: desired state against the guests'
"""
