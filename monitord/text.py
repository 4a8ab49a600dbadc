"""Outside text made safe to show: URLs without their credentials, server strings without control characters.

A leaf (stdlib only), so the config, the API, the CLI, the store and the status page all use the same two functions.
"""

from __future__ import annotations

import re
import unicodedata

MASK = "***"

# Bidirectional overrides and isolates reorder what a terminal or a page shows (U+202E turns "exe.txt" around).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_AUTHORITY_END = re.compile(r"[/?#\\]")


def redact_url(url: str, *, hide_path: bool = False) -> str:
    """`url` with its userinfo replaced by *** (and, with `hide_path`, its path and query too).

    Hostile userinfo is the point: a password may hold `@`, `:`, `/`, `?` or `#`, which split a URL in other places
    than the user meant. Everything up to the last `@` of the authority is userinfo; an `@` past the first `/`, `?`
    or `#` ends the userinfo instead when what comes before is no host:port or the `@` is in the first path
    segment (`http://u:pa/ss@host` has the password `pa/ss`). A legitimate `@` there is masked too: better a
    hidden host than a shown password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start():]) if end else (rest, "")
    if "@" in authority:
        authority = MASK + "@" + authority.rsplit("@", 1)[1]
    elif "@" in tail and (not _host_and_port(authority) or "/" not in tail[1: tail.index("@")]):
        host_part = rest[rest.rfind("@") + 1:]
        end = _AUTHORITY_END.search(host_part)
        authority, tail = (host_part[: end.start()], host_part[end.start():]) if end else (host_part, "")
        authority = MASK + "@" + authority
    if hide_path and tail.strip("/"):
        tail = "/" + MASK
    return f"{scheme}://{authority}{tail}" if sep else f"{authority}{tail}"


def _host_and_port(authority: str) -> bool:
    """Whether `authority` reads as host[:port] with a numeric port (an IPv6 literal in brackets included)."""
    if authority.startswith("["):
        return re.fullmatch(r"\[[0-9A-Fa-f:.%a-zA-Z]*\](:\d*)?", authority) is not None
    _host, colon, port = authority.partition(":")
    return not colon or port.isdigit() or port == ""


def safe_text(value: object, *, limit: int | None = None) -> str:
    """`value` as text that cannot drive a terminal or reorder a page: control characters (C0, DEL, C1, which
    carry ANSI and OSC escapes) and bidirectional overrides become visible `\\xNN`/`\\uNNNN` escapes.

    Markup is not touched here: the CLI renders the result as a plain rich Text and a page escapes it as HTML.
    `limit` cuts the result to that many characters, the last being an ellipsis.
    """
    text = value if isinstance(value, str) else str(value)
    if any(_unsafe(c) for c in text):
        text = "".join(_escape(c) if _unsafe(c) else c for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def _unsafe(char: str) -> bool:
    return char in _BIDI or (unicodedata.category(char) == "Cc" and char not in "\t")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
