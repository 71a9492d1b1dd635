"""What must never reach the audit trail or a log line: credentials.

A query parameter is a credential when its *decoded* name says so: Tornado
(like every URL parser) percent-decodes names and turns ``+`` into a space,
so ``%74oken``, ``to%6Ben`` and ``token`` are one parameter.  Names are
compared after decoding (repeatedly, so a double-encoded ``%2574oken`` is
caught too), Unicode NFKC folding, case folding and dropping every character
that is not a letter or digit (``token%00``, ``TOKEN``, ``access-token``,
``X_Auth_Token``); the result is a credential if it holds one of
``CREDENTIAL_WORDS``.  Apart from names, anything shaped like a HealthSync
token (``hs_`` and at least 20 URL-safe characters), decoded or not, is a
credential wherever it stands.

``redact_query`` keeps every other parameter as sent (the audit trail shows
what was asked) and replaces a credential's value with ``REDACTED``;
``redact_uri`` does the same to a path with its query, for log lines;
``RedactingFilter`` scrubs token-shaped text from any log record.

Pure functions; the filter is safe from any thread.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "REDACTED"

#: Any decoded, folded parameter name containing one of these is a credential.
CREDENTIAL_WORDS = (
    "token", "auth", "bearer", "secret", "passw", "pwd", "key", "credential", "session", "cookie", "jwt",
)

#: A HealthSync token (``auth.new_token``: ``hs_`` + 43 URL-safe characters), or a long enough part of one.
TOKEN_SHAPE = re.compile(r"hs_[A-Za-z0-9_-]{20,}")

_DECODE_ROUNDS = 4


def decode(text: str) -> str:
    """``text`` percent- and ``+``-decoded until it stops changing (a few rounds at most)."""
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote_plus(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def fold(name: str) -> str:
    """A parameter name as compared: decoded, NFKC, case-folded, letters and digits only."""
    folded = unicodedata.normalize("NFKC", decode(name)).casefold()
    return "".join(c for c in folded if c.isascii() and c.isalnum())


def is_credential_name(name: str) -> bool:
    """Whether a parameter named ``name`` (raw or decoded) could carry a credential."""
    folded = fold(name)
    return any(word in folded for word in CREDENTIAL_WORDS)


def has_secret(text: str) -> bool:
    """Whether ``text``, as sent or decoded, holds something shaped like a token."""
    return bool(TOKEN_SHAPE.search(text) or TOKEN_SHAPE.search(decode(text)))


def scrub(text: str) -> str:
    """``text`` with every token-shaped run replaced (for paths and free text)."""
    text = TOKEN_SHAPE.sub(REDACTED, text)
    decoded = decode(text)
    return TOKEN_SHAPE.sub(REDACTED, decoded) if TOKEN_SHAPE.search(decoded) else text


def redact_query(query: str) -> str:
    """``query`` with the value of every credential parameter replaced by ``REDACTED``.

    Parameters are split on ``&`` (and ``;``, which some parsers also take);
    the others are kept byte for byte.  A parameter whose name itself holds a
    token-shaped secret is replaced whole.
    """
    if not query:
        return query
    parts = []
    for part in re.split(r"([&;])", query):
        if part in ("&", ";") or not part:
            parts.append(part)
            continue
        name, eq, _value = part.partition("=")
        if has_secret(name):
            parts.append(REDACTED)
        elif is_credential_name(name) or has_secret(part):
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(part)
    return "".join(parts)


def redact_uri(uri: str) -> str:
    """A request URI (path and query) fit for a log line."""
    path, sep, query = uri.partition("?")
    return scrub(path) + sep + redact_query(query)


class RedactingFilter(logging.Filter):
    """Scrubs token-shaped text from a record's message (installed on the log handlers).

    The handlers name no credential parameters in their log lines (they log
    ``redact_uri``); this catches a secret that ends up in a message anyway,
    say inside an exception's text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the formatter's problem, not ours
            return True
        if has_secret(message):
            record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if has_secret(text):
                record.exc_text = scrub(text)
        return True


def redact_url(url: str) -> str:
    """A service URL (``redis://user:pass@host``) with its password shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
