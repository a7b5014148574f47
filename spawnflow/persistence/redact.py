"""Redaction of secrets before anything reaches the log or the database.

Keys are matched by name, recursively through dicts and lists; the value is
replaced, the key kept, so the history still shows that a secret was given.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
        return {
            k: (
                MASK
                if v is not None and _secret(k)
                else redact(v)
                if isinstance(v, (dict, list, tuple))
                else v
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) if isinstance(v, (dict, list, tuple)) else v for v in value]
    return value


def mask_url(url: str) -> str:
    """``url`` with its userinfo password, query string and fragment masked.

    Presigned URLs carry their token in the query (``?X-Amz-Signature=...``),
    database URLs their password in the userinfo; either would otherwise reach
    the log, errors, exports, the CLI or the logs. The user name, host, port and
    path are kept so an operator still sees where it pointed. Anything that is
    not a ``scheme://`` URL is returned unchanged.
    """
    parts = urlsplit(url)
    if not parts.scheme or "//" not in url:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        # user:password keeps the user (which account, as SQLAlchemy shows it);
        # a bare userinfo may itself be the token, so all of it goes.
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    if netloc == parts.netloc and not parts.query and not parts.fragment:
        return url  # nothing to mask
    if url[len(parts.scheme) :].startswith("://"):
        # Spelled out: urlunsplit turns sqlite:////abs (empty host) into sqlite://abs.
        return (
            f"{url[: len(parts.scheme)]}://{netloc}{parts.path}"
            + (f"?{MASK}" if parts.query else "")
            + (f"#{MASK}" if parts.fragment else "")
        )
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            MASK if parts.query else "",
            MASK if parts.fragment else "",
        )
    )
