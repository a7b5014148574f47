"""Redaction of secrets before anything reaches the log or the database.

Keys are matched by name, recursively through dicts and lists; the value is
replaced, the key kept, so the history still shows that a secret was given.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# Names that carry secret values; *_uuid / *_file are references, not secrets.
_SECRET_KEY = re.compile(r"(password|passphrase|passwd|secret_value|private_key|token)$", re.I)


def _secret(key: object, known: dict[str, bool] = {}) -> bool:  # noqa: B006 - a memo
    """Whether ``key`` names a secret (memoised: saves are hot and keys repeat)."""
    if not isinstance(key, str):
        return False
    found = known.get(key)
    if found is None:
        found = _SECRET_KEY.search(key) is not None
        if len(known) < 4096:  # task results may bring any key; keep the memo small
            known[key] = found
    return found


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with every secret-named key masked.

    Dicts and lists are copied all the way down, so the copy never changes
    when the original is later changed in place.
    """
    if isinstance(value, dict):
        return {k: (MASK if v is not None and _secret(k)
                    else redact(v) if isinstance(v, (dict, list, tuple)) else v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) if isinstance(v, (dict, list, tuple)) else v for v in value]
    return value
