"""The results of spawn steps that other steps, recovery or the history read.

A step's result is stored (JSON) in the event log and handed by TaskFlow to
the steps that require it; recovery and the history read it back from the
log. The shapes are declared here, once, below every user: the flows that
produce and consume them, the engine's recovery and the history reader all
import this module, and it lives in the lowest layer they share.

The keys are persisted: renaming one breaks reading old logs.
"""

from __future__ import annotations

from typing import TypedDict

#: The Neutron event a build waits for before resuming a paused domain.
VIF_PLUGGED = "network-vif-plugged"

#: Names (persisted atom names) of the step that starts the wait and the one that ends it.
VIFS_STEP = "vifs"
RESUME_STEP = "resume"


class DiskMapping(TypedDict):
    """One disk of ``disk_info`` (keyed ``"root"`` or by volume id)."""

    name: str
    bus: str
    dev: str
    type: str


class ImageResult(TypedDict):
    """Result of the ``image`` step: the instance disk and what this build made."""

    instance_dir: str
    created_dir: bool
    disk_path: str
    disk_format: str
    created_disk: bool
    base_path: str
    console_log: str


class PlugRecord(TypedDict):
    """One plugged VIF inside ``VifsResult.plugged`` (``asdict`` of ``PlugResult``)."""

    vif_id: str
    tap: str
    created_tap: bool
    created_bridge: bool


class VifsResult(TypedDict):
    """Result of the ``vifs`` step.

    ``expected_events`` are the port ids whose ``network-vif-plugged`` the
    ``resume`` step waits for; ``waiting_since`` (epoch seconds) is when the
    wait's clock started, persisted so that a resumed build does not restart
    it: the deadline is ``waiting_since + [network] vif_plugging_timeout``.
    """

    expected_events: list[str]
    waiting_since: float
    plugged: list[PlugRecord]


class DomainInfo(TypedDict):
    """Result of the ``domain_create`` step."""

    uuid: str
    started_paused: bool
