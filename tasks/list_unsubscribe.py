"""`notify(list_unsubscribe=…, one_click=…)`: the List-Unsubscribe field (RFC 2369) and, for
one-click unsubscription, List-Unsubscribe-Post (RFC 8058), as bulk senders must give them.

Each URI is `https://host/…` or `mailto:address…`, ASCII (percent-encode anything else), at most
MAX_URI_CHARS, with no whitespace, control character or `<`, `>`, `,` (which would end it inside
the field's `<…>, <…>` list); at most one of each scheme. `one_click` needs the https URI: the
receiver POSTs `List-Unsubscribe=One-Click` to it. The fields are written like a producer's extra
headers, and the DKIM signature covers both (RFC 8058 §4 requires it).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tasks.header_text import InvalidNotification

MAX_URI_CHARS = 900  # "List-Unsubscribe: <" + the URI + ">," stays within a 998-octet line
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>,]")
ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058 §3.1: the only value allowed


def check_uris(value: str | list[str]) -> tuple[str, ...]:
    """The URIs of `list_unsubscribe` (one, or a list of one https and/or one mailto), checked.

    :raises InvalidNotification: "list_unsubscribe…: …" naming the problem.
    """
    uris = [value] if isinstance(value, str) else list(value)
    if not uris:
        raise InvalidNotification("list_unsubscribe: is an empty list (give None instead)")
    seen: set[str] = set()
    for index, uri in enumerate(uris):
        where = "list_unsubscribe" if isinstance(value, str) else f"list_unsubscribe[{index}]"
        scheme = _check_uri(where, uri)
        if scheme in seen:
            raise InvalidNotification(f"{where}: a second {scheme} URI (give at most one of each)")
        seen.add(scheme)
    return tuple(uris)


def _check_uri(where: str, uri: str) -> str:
    if not uri.isascii():
        raise InvalidNotification(f"{where}: must be ASCII (percent-encode other characters)")
    if len(uri) > MAX_URI_CHARS:
        raise InvalidNotification(f"{where}: longer than {MAX_URI_CHARS} characters")
    if bad := _FORBIDDEN.search(uri):
        raise InvalidNotification(f"{where}: contains {bad[0]!r}, not allowed in the field")
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("https", "mailto"):
        raise InvalidNotification(f"{where}: must be an https: or mailto: URI")
    if scheme == "https" and not urlsplit(uri).hostname:
        raise InvalidNotification(f"{where}: an https URI needs a host (https://host/…)")
    if scheme == "mailto" and "@" not in rest.partition("?")[0]:
        raise InvalidNotification(f"{where}: a mailto URI needs an address (mailto:a@b…)")
    return scheme


def check_one_click(uris: tuple[str, ...] | None, one_click: bool) -> None:
    """`one_click` needs an https URI among `uris`.

    :raises InvalidNotification: "one_click: …".
    """
    if not one_click:
        return
    if not uris:
        raise InvalidNotification("one_click: needs list_unsubscribe with an https URI")
    if not any(uri.lower().startswith("https:") for uri in uris):
        raise InvalidNotification("one_click: needs an https URI in list_unsubscribe (RFC 8058)")


def list_fields(uris: tuple[str, ...], one_click: bool) -> list[tuple[str, str]]:
    """The (name, value) header fields for these URIs: none when there are none."""
    if not uris:
        return []
    fields = [("List-Unsubscribe", ", ".join(f"<{uri}>" for uri in uris))]
    if one_click:
        fields.append(("List-Unsubscribe-Post", ONE_CLICK))
    return fields
