"""Read back what spawnflow wrote into a domain's metadata (build id, instance name).

Lets a re-run or a revert tell a domain this build defined from one it did not.
"""

from __future__ import annotations

import libvirt
from lxml import etree

from spawnflow.virt.guest_config import METADATA_NS


def build_id_of(dom: libvirt.virDomain) -> str | None:
    root = etree.fromstring(dom.XMLDesc(0).encode())
    found = root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}build-id")
    return found.text if found is not None else None
