"""Where an image may come from: the ``[images] allowed_sources`` allow list.

An entry is either an absolute directory or a URL prefix
``scheme://host[:port]/path-prefix``. A source is allowed when

- it is a local path (plain absolute, or ``file:///path``) whose resolved form
  (links followed, ``..`` collapsed) lies inside an allowed directory; or
- it is an ``http(s)://`` URL whose parsed pieces match an entry: same scheme,
  same host (lower case, IDNA-encoded, a trailing dot dropped; an IP address in
  its canonical form), same port (the scheme's default when absent), and a
  percent-decoded path without dot segments, NUL or backslash that lies below
  the entry's path. Pieces are compared, never string prefixes, so
  ``https://img.example.com.evil/`` does not match ``https://img.example.com/``.

Addresses no image server should have are refused unless an entry names them:
loopback, link-local (the cloud metadata service is one), unspecified,
multicast, reserved, ``0.0.0.0/8`` and the known metadata addresses, also when
embedded in an IPv6 address (``::ffff:127.0.0.1``, 6to4, NAT64). An entry
"names" such an address when its host *is* that address, or is ``localhost``
or a metadata host name; an ordinary host name listed in an entry that
resolves to one is refused, because that is what DNS rebinding looks like.
Every address a name resolves to is checked (one bad address refuses the
name), at spec time and again for the address each fetch connects to.

Private (RFC 1918, ULA) addresses are ordinary: an internal image server is
normal, and an entry must name its host anyway. Legacy numeric host forms
(``2130706433``, ``0x7f.1``, ``127.1``) are refused outright: what they mean
depends on the resolver.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from spawnflow.persistence.redact import MASK, mask_url
from spawnflow.virt import hostpaths

OPTION = "[images] allowed_sources"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba
        "fd00:ec2::254",  # AWS IPv6
        "fd20:ce::254",  # GCP IPv6
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPAT = ipaddress.ip_network("::/96")

Resolver = Callable[[str, int], list[str]]


class SourceRefused(ValueError):
    """A source (or a redirect, or an address) outside the allow list; ``str`` is the reason."""


def getaddrinfo_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP); empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


def special_address(address: str) -> str | None:
    """Why ``address`` is no place for an image server (loopback, metadata...), else None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    embedded = None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 1)):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for candidate in (embedded, ip):  # the embedded IPv4 says more about where it goes
        if candidate is None:
            continue
        if candidate in _METADATA_ADDRESSES:
            return "a cloud metadata address"
        for label, flag in (
            ("loopback", candidate.is_loopback),
            ("link-local", candidate.is_link_local),
            ("unspecified", candidate.is_unspecified),
            ("multicast", candidate.is_multicast),
            ("reserved", candidate.is_reserved),
        ):
            if flag:
                return f"a {label} address"
        if isinstance(candidate, ipaddress.IPv4Address) and candidate in _THIS_NETWORK:
            return "a 'this network' (0.0.0.0/8) address"
    return None


def _canonical_host(host: str) -> str:
    """``host`` lower case, IDNA-encoded, without a trailing dot; IPs in canonical form.

    Raises ``SourceRefused`` for a legacy numeric form (``2130706433``) or a
    name that is not valid IDNA.
    """
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        raise SourceRefused("has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:  # inet_aton accepts 127.1, 0x7f.0.0.1, 2130706433: one host, many spellings
        raise SourceRefused(f"host {host!r} is a legacy numeric IP form; give the dotted address")
    if host.replace(".", "").isdigit():
        raise SourceRefused(f"host {host!r} is a numeric form of no IP address")
    if not host.isascii():
        # Python's codec is IDNA 2003 and requests' is IDNA 2008: "straße" is
        # "strasse" to one and "xn--strae-oqa" to the other, so the host checked
        # would not be the host connected to. The A-label is unambiguous.
        raise SourceRefused(f"host {host!r} is not ASCII; give its xn-- (punycode) form")
    if not all(label and len(label) <= 63 for label in host.rstrip(".").split(".")):
        raise SourceRefused(f"host {host!r} is not a valid host name")
    return host


def _segments(path: str) -> list[str]:
    """The percent-decoded path's segments; refuses dot segments, NUL and backslash.

    Decoded first, so ``%2e%2e`` and ``%2f`` are seen as the server will see them.
    """
    decoded = unquote(path or "/")
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in decoded):
        raise SourceRefused("has a control character, NUL or backslash in its path")
    parts = decoded.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise SourceRefused("has a '.' or '..' segment in its path")
    return parts


@dataclass(frozen=True)
class UrlPrefix:
    """One URL entry: scheme, canonical host, port and path segments (a directory)."""

    text: str
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        parts = urlsplit(text)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{text!r} is not an http(s)://host/... prefix")
        if parts.username is not None or parts.query or parts.fragment:
            raise ValueError(f"{mask_url(text)!r} must not carry userinfo, a query or a fragment")
        segments = [s for s in _segments(parts.path) if s]
        return cls(
            text,
            parts.scheme,
            _canonical_host(parts.hostname),
            parts.port or _DEFAULT_PORTS[parts.scheme],
            tuple(segments),
        )

    @property
    def names_special_host(self) -> bool:
        """Whether this entry names a host that may be special (an IP, localhost, metadata)."""
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return self.host in _LOOPBACK_NAMES or self.host in _METADATA_NAMES

    def matches(self, scheme: str, host: str, port: int, segments: list[str]) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        n = len(self.segments)
        # The entry is a directory: its segments must all be whole segments of
        # the source, and the source must name something below it.
        return tuple(segments[:n]) == self.segments and len(segments) > n and segments[-1] != ""


class AllowedSources:
    """The parsed allow list; ``check`` says whether (and how) a source may be read."""

    def __init__(self, entries: Iterable[str], *, never: Iterable[str] = ()) -> None:
        self.entries = [str(e).strip() for e in entries if str(e).strip()]
        self.directories: list[str] = []
        self.prefixes: list[UrlPrefix] = []
        for entry in self.entries:
            if "://" in entry:
                try:
                    self.prefixes.append(UrlPrefix.parse(entry))
                except (ValueError, SourceRefused) as exc:
                    raise ValueError(f"{OPTION}: {exc}") from None
            elif os.path.isabs(entry):
                self.directories.append(hostpaths.resolve(entry))
            else:
                raise ValueError(
                    f"{OPTION}: {entry!r} is neither an absolute directory nor an http(s):// prefix"
                )
        # Paths refused whatever the list says (the instances and the database).
        self.never = [hostpaths.resolve(p) for p in never]

    def describe(self) -> str:
        return ", ".join(mask_url(e) for e in self.entries) or "empty"

    def _outside(self, what: str) -> SourceRefused:
        return SourceRefused(f"{what} is outside {OPTION} ({self.describe()})")

    # --- local ---------------------------------------------------------------

    def local_directory(self, path: str) -> str:
        """The allowed directory holding ``path`` (resolved); SourceRefused otherwise.

        The path must exist and be a regular file (after links): a missing file,
        a FIFO, a device or a directory is refused here, before anything is written.
        """
        real = hostpaths.resolve(path)
        for never in self.never:
            if real == never or hostpaths.is_within(real, never):
                raise SourceRefused(
                    f"{path!r} is inside spawnflow's own state ({never}); never an image source"
                )
        directory = hostpaths.containing_dir(real, self.directories)
        if directory is None:
            shown = path if real == path else f"{path!r} (resolves to {real!r})"
            raise self._outside(repr(path) if real == path else shown)
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            # Refused, not left to the fetch: a spec naming a missing file and
            # the checksum of a cached image would otherwise get that image
            # without ever having had access to its source.
            raise SourceRefused(f"{path!r} does not exist") from None
        except OSError as exc:
            raise SourceRefused(f"{path!r} cannot be examined: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise SourceRefused(f"{path!r} is not a regular file")
        return directory

    # --- URLs ----------------------------------------------------------------

    def match_url(self, url: str) -> UrlPrefix:
        """The entry ``url`` lies under; SourceRefused otherwise (no DNS lookup)."""
        parts = urlsplit(url)
        shown = repr(mask_url(url))
        if parts.scheme not in _DEFAULT_PORTS:
            raise SourceRefused(f"{shown} is not an http(s) URL")
        try:
            if parts.username is not None:
                raise SourceRefused("carries user credentials")
            host = _canonical_host(parts.hostname or "")
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
            segments = _segments(parts.path)
        except SourceRefused as exc:
            raise SourceRefused(f"{shown} {exc}") from None
        except ValueError as exc:  # a port out of range
            raise SourceRefused(f"{shown} is not a valid URL: {exc}") from None
        for prefix in self.prefixes:
            if prefix.matches(parts.scheme, host, port, segments):
                return prefix
        raise self._outside(shown)

    def address_refusal(self, url: str, address: str) -> str | None:
        """Why ``url``'s host may not be reached at ``address``, else None."""
        why = special_address(address)
        if why is None:
            return None
        try:
            host = _canonical_host(urlsplit(url).hostname or "")
        except SourceRefused as exc:
            return str(exc)
        if any(p.host == host and p.names_special_host for p in self.prefixes):
            return None
        return (
            f"{mask_url(url)!r}: host {host} is at {address}, {why}; refused unless "
            f"an {OPTION} entry names that address"
        )

    def check_url(self, url: str, resolver: Resolver | None = getaddrinfo_resolver) -> None:
        """Refuse ``url`` unless an entry matches it and none of its addresses is special.

        A name that does not resolve is not refused here: the fetch checks the
        address it connects to anyway (and fails if there is none).
        """
        self.match_url(url)
        if resolver is None:
            return
        parts = urlsplit(url)
        for address in resolver(parts.hostname or "", parts.port or _DEFAULT_PORTS[parts.scheme]):
            why = self.address_refusal(url, address)
            if why:
                raise SourceRefused(why)

    def check(
        self, source: str, resolver: Resolver | None = getaddrinfo_resolver
    ) -> tuple[str, str] | None:
        """Raise ``SourceRefused`` unless ``source`` is allowed.

        Returns ``(allowed_dir, path)`` for a local source, None for a URL.
        """
        path = local_path(source)
        if path is not None:
            return self.local_directory(path), path
        self.check_url(source, resolver)
        return None

    def check_redirect(self, current: str, location: str) -> str:
        """The absolute URL a redirect leads to; SourceRefused if it leaves the list."""
        target = urljoin(current, location)
        try:
            self.match_url(target)
        except SourceRefused as exc:
            raise SourceRefused(f"{mask_url(current)!r} redirects to {exc}") from None
        return target


def local_path(source: str) -> str | None:
    """The local path ``source`` names (plain absolute or ``file://``), else None.

    Raises ``SourceRefused`` for ``file:`` forms that do not name an absolute
    local path (``file:relative``, ``file://otherhost/``) or that hide a NUL.
    """
    parts = urlsplit(source)
    if parts.scheme == "file":
        if (
            "//" not in source[:7]
            or parts.netloc not in ("", "localhost")
            or not parts.path.startswith("/")
        ):
            raise SourceRefused(f"{source!r} is not a file:///absolute/path URL")
        path = unquote(parts.path)
    elif parts.scheme == "" and source.startswith("/"):
        path = source
    else:
        return None
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise SourceRefused(f"{source!r} has a control character or NUL in its path")
    return path


def is_masked(url: str) -> bool:
    """Whether ``url`` is a masked form (its query, fragment or userinfo was dropped)."""
    parts = urlsplit(url)
    return MASK in (parts.query, parts.fragment) or (
        "@" in parts.netloc and MASK in parts.netloc.rpartition("@")[0]
    )
