"""Checks shared by every URI the system takes (sources, outputs, database URLs): host names and
ports that are what they claim, and credentials that never reach a log, an error line, a result
or a record.

A value from a URI is handed to GStreamer as an element property, never pasted into a launch
string, so it cannot add elements; checking it here as well means a typo or an injection
attempt is refused with one line before anything starts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
# scheme://user:password@ anywhere in a text (an error message may quote a whole URL)
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):[^@/\s]*@")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
REDACTED = "***"


def valid_host(host: str) -> bool:
    """An IPv4/IPv6 address or an RFC 1123 host name (letters, digits, hyphens, dots)."""
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def redact(text: str) -> str:
    """`rtsp://user:secret@cam/live` -> `rtsp://user:***@cam/live`, wherever it appears."""
    return _CREDENTIALS.sub(rf"\g<head>:{REDACTED}@", text)


def has_space_or_control(text: str) -> bool:
    """Whitespace or control characters, which no network URI we accept contains."""
    return bool(_SPACE_OR_CONTROL.search(text))


def has_control(text: str) -> bool:
    """Control characters (newlines, NUL, escapes), which no path or name we accept contains."""
    return bool(_CONTROL.search(text))


@dataclass(frozen=True)
class NetworkUri:
    """A network URI taken apart and checked: credentials held apart from the address."""

    scheme: str
    host: str
    port: int | None
    path: str  # with the query, if any: it belongs to the server
    username: str | None
    password: str | None

    @property
    def address(self) -> str:
        """The URI without credentials (what an element's `location` gets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{host}{port}{self.path}"


def parse_network_uri(text: str, schemes: tuple[str, ...]) -> NetworkUri:
    """Split and check `scheme://[user[:password]@]host[:port][/path][?query]`; ValueError
    with a reason (never quoting a password) when it is not one."""
    if has_space_or_control(text):
        raise ValueError("it contains spaces or control characters")
    parts = urlsplit(text)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"the scheme must be one of {', '.join(s + '://' for s in schemes)}")
    host = parts.hostname or ""
    if not valid_host(host):
        raise ValueError(f"host {host!r} is not an IP address or a host name")
    port = _port(parts)
    if parts.fragment:
        raise ValueError("a #fragment has no meaning here")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return NetworkUri(parts.scheme.lower(), host, port, path, user, password)


def _port(parts: SplitResult) -> int | None:
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    if port is None and parts.netloc.endswith(":"):
        raise ValueError("the port must be a number from 1 to 65535")
    return port
