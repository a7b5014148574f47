"""Placement from anywhere: queue builds and deletes for a host's agent, follow and cancel them.

    from spawnflow.client import Client

    with Client("postgresql+psycopg://spawnflow@db/spawnflow") as client:
        build_id = client.start_build("vm.yaml", host="cmp7")   # QUEUED for cmp7's agent
        outcome = client.wait(build_id, timeout=600)           # Outcome(state='ACTIVE', ...)
        delete_id = client.delete_instance(instance_uuid)

The shared event log is the fleet's distributed engine: the caller places a
build on a host, the host's agent (``spawnflow agent``) picks it up (at once
on PostgreSQL, which notifies it; by its poll on SQLite), runs and recovers
it there. Nothing here needs a compute host: the package imports neither
libvirt nor netlink, and checks a spec's shape only (the host's agent holds
the host's allow lists and checks the spec against them before it touches
anything). The same instance cannot be queued on two hosts: the database
allows one unfinished build per instance, whatever its host.
"""

from spawnflow.client.client import Client
from spawnflow.engine.outcome import Outcome

__all__ = ["Client", "Outcome"]
