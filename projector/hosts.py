"""The ``Host`` header names `projector serve` answers (its defence against DNS rebinding).

Without the web extra's dependencies, so that the command line can check ``--allowed-host``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["LOOPBACK_NAMES", "allowed_hosts", "host_name"]

#: The names a browser on this machine uses for a loopback server.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def host_name(text: str) -> str:
    """`text` as a ``Host`` name :func:`allowed_hosts` compares (lower case, IPv6 in brackets);
    ``*`` (any host) and ``*.example.com`` (its subdomains) are kept.

    Raises ValueError for a name with a port, an empty one, or a ``*`` elsewhere.
    """
    name = text.strip().lower().rstrip(".") if text.strip() != "." else ""
    if name == "*":
        return name
    bare = name.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if address is not None:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    if not name or ":" in name or "/" in name or "@" in name:
        raise ValueError(f"{text!r} is not a host name: give it without scheme, port or path")
    if "*" in name[2:] or (name.startswith("*") and not name.startswith("*.")):
        raise ValueError(f"{text!r}: a wildcard is '*' or '*.example.com'")
    return name


def allowed_hosts(host: str, given: Sequence[str] = ()) -> list[str]:
    """The ``Host`` header values :func:`create_app` accepts when bound to `host`.

    Always the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``), the bound address
    itself unless it is a wildcard (``0.0.0.0``, ``::``), and the names `given`
    (``--allowed-host``; ``*`` turns the check off). A server bound to a wildcard address is
    reachable on loopback too, so it refuses other names unless they are given.
    """
    bound = [] if host in ("", "0.0.0.0", "::") else [host_name(host)]
    return list(dict.fromkeys([*LOOPBACK_NAMES, *bound, *(host_name(g) for g in given)]))
