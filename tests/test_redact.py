"""`projector.redact`: no password or token of a URL survives into a message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector import redact as redact_module
from projector.redact import MASK, redact, remember


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    """Each test starts with nothing remembered (remember() is process-wide)."""
    saved = set(redact_module._remembered)
    redact_module._remembered.clear()
    yield
    redact_module._remembered.clear()
    redact_module._remembered.update(saved)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql://app:hunter22@127.0.0.1:5432/noetl",
            "postgresql://app:***@127.0.0.1:5432/noetl",
        ),
        ("postgres://app:hunter22@db/noetl", "postgres://app:***@db/noetl"),
        ("postgresql+psycopg://app:hunter22@db/noetl", "postgresql+psycopg://app:***@db/noetl"),
        ("nats://alice:hunter22@127.0.0.1:4222", "nats://alice:***@127.0.0.1:4222"),
        ("nats://s3cr3ttoken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://s3cr3ttoken@nats:4222", "tls://***@nats:4222"),
        ("wss://s3cr3ttoken@nats:443", "wss://***@nats:443"),
        # the password ends at the last "@" of the authority; "?" and "#" may be inside it
        ("postgresql://app:p@ss#w?rd@db/noetl", "postgresql://app:***@db/noetl"),
        ("postgresql://app:p%40ss@db/noetl", "postgresql://app:***@db/noetl"),
        ("postgresql://:onlypass@db/x", "postgresql://:***@db/x"),
        ("nats://a:one@h1:4222,nats://b:two@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
        # inside messages, quoted or not
        (
            "could not connect to NATS at nats://u:pw@127.0.0.1:1: refused",
            "could not connect to NATS at nats://u:***@127.0.0.1:1: refused",
        ),
        ("database URL 'mysql://root:pw@db/x' must", "database URL 'mysql://root:***@db/x' must"),
        ('url="nats://tok3n@h"', 'url="nats://***@h"'),
        # key/value connection strings and query parameters
        ("host=db password=hunter22 dbname=noetl", "host=db password=*** dbname=noetl"),
        ("host=db password='two words' user=app", "host=db password=*** user=app"),
        ("host=db sslpassword=key-pass", "host=db sslpassword=***"),
        (
            "postgresql://db/noetl?password=hunter22&sslmode=require",
            "postgresql://db/noetl?password=***&sslmode=require",
        ),
        ("nats://h:4222?token=abc", "nats://h:4222?token=***"),
        ("PASSWORD = hunter22", "PASSWORD = ***"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",  # a user name alone is no secret
        "postgresql://127.0.0.1/db",
        "nats://127.0.0.1:4222",
        "mail alice@example.com about it",
        "https://github.com/org/repo@v1",
        "event 'e1' of execution 'x' is already stored",
        "",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_remembered_secrets_are_masked_outside_urls_too() -> None:
    # libpq quotes a bad percent-encoding of the password without the URL around it.
    remember("postgresql://app:s3cret%zz@127.0.0.1/db")
    assert redact('invalid percent-encoded token: "s3cret%zz"') == (
        f'invalid percent-encoded token: "{MASK}"'
    )
    remember("nats://tok%2Fen99@127.0.0.1:4222")  # as written and percent-decoded
    assert redact("tok%2Fen99 tok/en99") == f"{MASK} {MASK}"
    remember("host=db password='quoted pass'")
    assert redact("quoted pass") == MASK


def test_short_secrets_are_not_remembered() -> None:
    remember("postgresql://app:abc@db/x")
    assert redact("abc is a common word") == "abc is a common word"
    assert redact("postgresql://app:abc@db/x") == "postgresql://app:***@db/x"


def test_remember_returns_the_url() -> None:
    url = "nats://u:hunter22@127.0.0.1:4222"
    assert remember(url) is url


_password = st.text(
    st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/'\"<>"
    ),
    min_size=1,
)


@given(user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), password=_password)
def test_no_password_survives_in_a_url(user: str, password: str) -> None:
    for scheme in ("postgresql", "nats"):
        message = f"cannot connect to {scheme}://{user}:{password}@127.0.0.1:1/db: refused"
        out = redact(message)
        assert f"{scheme}://{user}:{MASK}@127.0.0.1:1/db" in out
        assert f":{password}@" not in out
