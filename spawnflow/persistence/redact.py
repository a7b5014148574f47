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


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with every secret-named key masked."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
