"""`HOST:PORT` of a listener (`[http] listen`, `vigil up --http`): an IPv4 address, a host name, or an
IPv6 address in brackets (`[::1]:8780`); port 0 lets the system choose one (tests, benchmarks).

Imports nothing of Vigil: `vigil up` checks its option with it before loading anything else.
"""

from __future__ import annotations

import ipaddress
import re

#: A DNS name as RFC 1123 allows it: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def split_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8780' → ('127.0.0.1', 8780); '[::1]:8780' → ('::1', 8780). ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8780 or [::1]:8780), got {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535 after the last ':', got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            if ipaddress.ip_address(inner).version == 6:
                return inner, int(port)
        except ValueError:
            pass
        raise ValueError(f"expected an IPv6 address inside [ ], got {host!r}")
    if ":" in host:
        raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise ValueError(f"expected an IPv4 address, a host name or [IPv6], got {host!r}") from None
    return host, int(port)


def format_listen(host: str, port: int) -> str:
    """The inverse of split_listen: brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
