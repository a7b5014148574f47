"""Errors raised by spawnflow; every layer raises these, never bare Exception.

Each error says what went wrong in words an operator can act on, and names the
field, path or object involved.
"""


class SpawnflowError(Exception):
    """Base class of every spawnflow error."""


class InvalidSpec(SpawnflowError):
    """The build request is malformed; nothing was written or changed."""


class ConfigError(SpawnflowError):
    """A configuration option has an unusable value."""


class HostError(SpawnflowError):
    """A host primitive (libvirt, qemu-img, netlink) failed."""


class HostCallInterrupted(HostError):
    """A blocking host call (qemu-img) was ended because the build was cancelled or the
    agent is stopping; the step decides which (see ``flows.image``)."""


class LibvirtUnreachable(HostError):
    """libvirtd did not answer again within ``[libvirt] reconnect_timeout``.

    Raised only after the connection was re-opened and the call retried for
    that long, so it means "the daemon is down", not "the call failed".
    """


class NotSupportedByHost(HostError):
    """The connected hypervisor cannot do what the build asks for."""


class ImageError(HostError):
    """The image could not be fetched or is not acceptable."""


class ImageUnreachable(ImageError):
    """The image source could not be read or downloaded."""


class ImageChecksumMismatch(ImageError):
    """The downloaded image does not match the checksum in the spec."""


class ImageUnacceptable(ImageError):
    """The image is of the wrong format, or has a backing/data file."""


class VolumeError(HostError):
    """A volume could not be connected or disconnected."""


class EncryptionError(HostError):
    """A volume secret could not be created or removed."""


class VifError(HostError):
    """A VIF could not be plugged or unplugged."""


class FirewallError(HostError):
    """An instance filter could not be defined or removed."""


class DomainError(HostError):
    """A libvirt domain could not be defined, started, resumed or removed."""


class VifPlugTimeout(SpawnflowError):
    """Expected network-vif-plugged events did not arrive before the deadline."""


class VifPlugFailed(SpawnflowError):
    """Neutron (or the operator) reported a VIF as failed to plug."""


class BootTimeout(SpawnflowError):
    """The domain did not reach RUNNING before boot_timeout."""


class PersistenceError(SpawnflowError):
    """The event log refused or failed an operation."""


class IllegalTransition(PersistenceError):
    """A state change that the state machine does not allow; nothing was written."""


class LogUnavailable(PersistenceError):
    """The event log cannot take a write now (locked, full disk, server gone).

    Transient by nature: the build whose write failed is held, its step not
    run (or its result not claimed), until the log answers again.
    """


class Fenced(PersistenceError):
    """This agent's lease epoch is no longer the current one: another agent took the
    host over. The transaction was aborted; this agent must stop without
    touching the host."""


class SchemaError(PersistenceError):
    """The database is not a spawnflow database, or is newer than this code."""


class InvalidEvent(SpawnflowError):
    """An external event with an unknown name or status; nothing was recorded."""


class HostOwned(SpawnflowError):
    """Another live agent owns this host in this database; this one refuses to run."""


class BuildCancelled(SpawnflowError):
    """An operator cancelled the build; it rolls back from the next step boundary."""


class AgentStopping(BaseException):
    """The agent is stopping (SIGTERM) while a step waits.

    A BaseException on purpose: TaskFlow turns an Exception into a step
    failure (and a rollback), but lets this one through with the step still
    RUNNING, exactly as a crash would leave it, so the next start re-runs it.
    """


class UnknownBuild(SpawnflowError):
    """No build with this id exists in the database."""


class DeleteRefused(SpawnflowError):
    """An instance cannot be deleted (no build of it here, or it lives on another host)."""


class DeleteIncomplete(HostError):
    """A delete step could not remove some of what it found; the message names each."""


class ImageSourceRefused(ImageError):
    """The image source, a redirect it sends, or an address its host resolves to, is
    outside ``[images] allowed_sources``; nothing was fetched from there."""


class ImageFetchInterrupted(ImageError):
    """A fetch stopped because the build was cancelled or the agent is stopping."""
