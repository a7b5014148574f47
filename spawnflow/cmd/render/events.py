"""One raw event of the log in a few words, for ``history events``' Payload column."""

from __future__ import annotations

import json
from typing import Any

from spawnflow.history import Event

# Payload keys the table's other columns (kind, name, from→to) already show.
_QUIET_KEYS = {"state", "uuid", "name", "version", "parent", "type", "tag", "status"}


def _brief(value: Any) -> str:
    names = value.get("exc_type_names") if isinstance(value, dict) else None
    if isinstance(names, list) and names:
        return str(names[0]).rsplit(".", 1)[-1]
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _spec_brief(spec: Any) -> str:
    """A build's spec as ``2vcpu/512MB 1vif 0vol``."""
    spec = spec if isinstance(spec, dict) else {}
    flavor = spec.get("flavor") if isinstance(spec.get("flavor"), dict) else {}
    return (
        f"{flavor.get('vcpus', '?')}vcpu/{flavor.get('memory_mb', '?')}MB "
        f"{_count(spec.get('vifs'))}vif {_count(spec.get('volumes'))}vol"
    )


def payload_summary(event: Event) -> str:
    """The payload in a few words: what changed, without what the columns already say."""
    payload = event.payload
    if not isinstance(payload, dict):
        return "" if payload is None else _brief(payload)
    # An older or damaged row may hold any JSON where an object belongs.
    if "set" in payload:
        fields = dict(payload["set"]) if isinstance(payload["set"], dict) else {}
    else:
        fields = dict(payload)
    if "spec" in fields:
        fields["spec"] = _spec_brief(fields.pop("spec"))
    if isinstance(fields.get("meta"), dict) and set(fields["meta"]) == {"progress"}:
        fields["progress"] = fields.pop("meta")["progress"]
    if event.kind in ("atom", "flow") and event.from_state is None:
        return "created"
    parts = [
        f"{key}={_brief(value)}"
        for key, value in sorted(fields.items())
        if key not in _QUIET_KEYS and value is not None
    ]
    unset = payload.get("unset")
    parts += [f"-{key}" for key in (unset if isinstance(unset, list) else [])]
    return ", ".join(parts)


__all__ = ["payload_summary"]
