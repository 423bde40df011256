"""Credentials removed from text before it becomes an error message or a log line.

:func:`redact` takes any text (a URL, an error message that quotes one, a formatted log record)
and replaces the secrets in it with ``***``:

* the password of a URL: ``postgresql://user:***@host/db``, ``nats://user:***@host:4222`` (any
  scheme; the password ends at the last ``@`` of the authority, so passwords holding ``@`` are
  covered);
* a NATS token, the user part of a NATS URL without a password: ``nats://***@host``
  (``nats``, ``tls``, ``ws``, ``wss``); a PostgreSQL user name alone is no secret and stays;
* ``password=``, ``sslpassword=``, ``pass=`` and ``token=`` values, as in libpq's key/value
  connection strings (``host=db password=*** dbname=noetl``) and URL query parameters
  (``?password=***``), quoted or not.

Drivers sometimes quote a piece of a URL without the URL around it (libpq: ``invalid
percent-encoded token: "<password>"``). :func:`remember` notes the secrets of a URL the process
was configured with (its password or NATS token, as written and percent-decoded, and any
``password=`` value), and from then on :func:`redact` replaces them wherever they appear. Secrets
shorter than :data:`MIN_REMEMBERED` characters are not remembered (replacing them everywhere
would garble every message).

The project builds every message that can hold a URL through :func:`redact` (the connection
errors of PostgreSQL and NATS, the configuration errors, the embedded server's message), the URLs
it is configured with go through :func:`remember`, and the command line's log formatter
(:class:`projector.cli.safe.SafeFormatter`) runs :func:`redact` over every log line, nats-py's and
psycopg's included.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "MIN_REMEMBERED", "redact", "remember"]

#: What a secret is replaced with.
MASK = "***"
#: Shortest secret :func:`remember` keeps.
MIN_REMEMBERED = 4

_remembered: set[str] = set()

# scheme://userinfo@ : userinfo runs to the last "@" before the path ("/") or a space or quote
# (libpq and nats-py both end the authority at "/"; "?" and "#" may be part of a password).
_URL_AUTH = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^\s/\"'<>]*)@")
_TOKEN_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
# key=value and key='quoted value' (libpq conninfo, URL query parameters).
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:ssl)?password|\bpass|\btoken)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{scheme}://{user}:{MASK}@"
    if scheme.lower() in _TOKEN_SCHEMES and userinfo:
        return f"{scheme}://{MASK}@"
    return match.group()


def _mask_value(match: re.Match[str]) -> str:
    return f"{match.group('key')}{match.group('eq')}{MASK}"


def _secrets(url: str) -> set[str]:
    found = set()
    for match in _URL_AUTH.finditer(url):
        user, colon, password = match.group("userinfo").partition(":")
        if colon:
            found.add(password)
        elif match.group("scheme").lower() in _TOKEN_SCHEMES:
            found.add(user)
    for match in _KEY_VALUE.finditer(url):
        value = match.group("value")
        found.add(value[1:-1] if value[:1] in "'\"" else value)
    return {form for s in found for form in (s, unquote(s)) if len(form) >= MIN_REMEMBERED}


def remember(url: str) -> str:
    """Note the secrets of `url` (module docstring) for every later :func:`redact`; returns
    `url` unchanged, so a call can wrap where a configured URL is taken in."""
    _remembered.update(_secrets(url))
    return url


def redact(text: str) -> str:
    """`text` with every URL password, NATS token, ``password=`` value and remembered secret
    replaced by ``***``."""
    if "@" in text:
        text = _URL_AUTH.sub(_mask_userinfo, text)
    if "=" in text:
        text = _KEY_VALUE.sub(_mask_value, text)
    for secret in sorted(_remembered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text
