"""Reading a build spec file: bounded in size, without YAML aliases or base-60 numbers.

A spec file comes from whoever calls the CLI or the library; it is parsed
before anything else happens, so it must not cost minutes of CPU or a crash:
at most ``MAX_SPEC_BYTES``, no aliases (a "billion laughs"), numbers plain
decimal and short, and nesting too deep to read is one clean error.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from spawnflow.exceptions import InvalidSpec

# A spec is a few hundred bytes; a caller's megabytes are a mistake or an attack.
MAX_SPEC_BYTES = 1024 * 1024


class _SpecLoader(yaml.SafeLoader):
    """YAML without aliases: ``&a [*a, *a, ...]`` nested a few levels deep expands
    to billions of nodes when validated (a "billion laughs"); a spec never needs one."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            # PyYAML's stubs leave peek_event untyped: strict mypy refuses the call
            # (no-untyped-call), plain mypy does not (unused-ignore).
            event = self.peek_event()  # type: ignore[no-untyped-call, unused-ignore]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a build spec", event.start_mark
            )
        return super().compose_node(parent, index)


# YAML 1.1 reads "1:59:59" as a base-60 number, and PyYAML converts it digit by
# digit into an ever larger int: a 1 MiB scalar took a minute of CPU. No spec
# number is longer than a few digits.
_MAX_NUMBER_CHARS = 64


def _bounded_number(loader: _SpecLoader, node: yaml.ScalarNode) -> Any:
    text = str(node.value)
    if ":" in text or len(text) > _MAX_NUMBER_CHARS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a number must be plain decimal, at most {_MAX_NUMBER_CHARS} characters",
            node.start_mark,
        )
    if node.tag.endswith(":int"):
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _bounded_number)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _bounded_number)


def read_spec_file(source: str | os.PathLike[str]) -> Any:
    """The YAML (or ``.json``) document at ``source``; ``InvalidSpec`` in one line."""
    name = os.fspath(source)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise InvalidSpec(f"cannot read build spec {name!r}: {exc.strerror}") from exc
    if len(data) > MAX_SPEC_BYTES:
        raise InvalidSpec(f"build spec {name!r} is larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        if name.endswith(".json"):
            return json.loads(text)
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader, no aliases
    except RecursionError:
        raise InvalidSpec(f"build spec {name!r} is nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:
        # One line: YAML errors span several (context, marks).
        reason = " ".join(str(exc).split())
        raise InvalidSpec(f"build spec {name!r} is not valid YAML/JSON: {reason}") from None
