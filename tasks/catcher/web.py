"""The catcher's read-only web page: the caught messages, newest first, and each one's headers
and text part. Everything taken from a message is HTML-escaped, and the Content-Security-Policy
lets the page load nothing (no script, image or frame a message could smuggle in would run).

Bounded: the list shows the newest `LIST_LIMIT` messages reading at most `HEAD_BYTES` of each,
a message page reads at most `max_bytes`, and every connection times out after `TIMEOUT` s.
"""

from __future__ import annotations

import html
import threading
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from settings import Listen
from tasks.catcher.maildir import Maildir, Stored

LIST_LIMIT = 200
HEAD_BYTES = 65536
TIMEOUT = 10.0
_HEADERS_SHOWN = ("From", "To", "Cc", "Subject", "Date")
_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: 14px 24px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header p { margin: 4px 0 0; color: #b8c0d0; font-size: 13px; }
main { padding: 16px 24px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: 8px 12px; border-bottom: 1px solid #e4e7ec;
         vertical-align: top; overflow-wrap: break-word; }
table.headers th { width: 1%; white-space: nowrap; }
th { background: #eef0f4; font-size: 13px; color: #4a5468; }
td.size, th.size { text-align: right; white-space: nowrap; }
td.when { white-space: nowrap; color: #4a5468; }
a { color: #1f5fbf; text-decoration: none; } a:hover { text-decoration: underline; }
pre { background: #fff; padding: 12px; white-space: pre-wrap; overflow-wrap: anywhere;
      box-shadow: 0 1px 2px #0002; }
.empty { color: #4a5468; }
"""


class CatcherWeb:
    """The page's HTTP server on its own thread; `start()` binds, `stop()` ends it."""

    def __init__(self, listen: Listen, maildir: Maildir, max_bytes: int) -> None:
        pages = _Pages(maildir, max_bytes)

        class Handler(_Handler):
            pass

        Handler.pages = pages
        self._server = ThreadingHTTPServer((listen.host, listen.port), Handler, False)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError when the address is taken or not this machine's."""
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(TIMEOUT)
        self._server.server_close()


class _Pages:
    """The two pages, as HTML text."""

    def __init__(self, maildir: Maildir, max_bytes: int) -> None:
        self._maildir = maildir
        self._max_bytes = max_bytes

    def listing(self) -> str:
        stored = self._maildir.messages(LIST_LIMIT)
        rows = "".join(self._row(item) for item in stored)
        if not rows:
            body = '<p class="empty">No mail caught yet. Send some, then reload.</p>'
        else:
            body = (
                "<table><tr><th>Received (UTC)</th><th>From</th><th>To</th><th>Subject</th>"
                f'<th class="size">Size</th></tr>{rows}</table>'
            )
        note = f"{len(stored)} message{'' if len(stored) == 1 else 's'} in {self._maildir.root}"
        return _page("Caught mail", note, body, refresh=True)

    def message(self, name: str) -> str | None:
        path = self._maildir.find(name)
        if path is None:
            return None
        message = _parse(path, self._max_bytes)
        if message is None:
            body = "<p>This message is too large or unreadable to show here.</p>"
            return _page(name, str(path), body)
        headers = "".join(
            f"<tr><th>{_e(key)}</th><td>{_e(_header(value))}</td></tr>"
            for key, value in message.items()
        )
        text = _text_part(message)
        parts = (
            f'<p><a href="/">&larr; all caught mail</a></p>'
            f"<h2>Text</h2><pre>{_e(text)}</pre>"
            f'<h2>Headers</h2><table class="headers">{headers}</table>'
        )
        return _page(_header(message.get("subject", "")) or "(no subject)", str(path), parts)

    def _row(self, item: Stored) -> str:
        path = self._maildir.root / item.folder / item.name
        message = _parse(path, HEAD_BYTES, headers_only=True)
        fields = dict.fromkeys(_HEADERS_SHOWN, "")
        if message is not None:
            fields = {name: _header(message.get(name, "")) for name in _HEADERS_SHOWN}
        when = datetime.fromtimestamp(item.mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")
        subject = _e(fields["Subject"] or "(no subject)")
        link = f'<a href="/m/{quote(item.name, safe="")}">{subject}</a>'
        return (
            f'<tr><td class="when">{when}</td><td>{_e(fields["From"])}</td>'
            f"<td>{_e(fields['To'])}</td><td>{link}</td>"
            f'<td class="size">{item.size:,} B</td></tr>'
        )


class _Handler(BaseHTTPRequestHandler):
    pages: _Pages
    timeout = TIMEOUT
    server_version = "mailroom-catcher"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        page: str | None = None
        if path == "/":
            page = self.pages.listing()
        elif path.startswith("/m/"):
            page = self.pages.message(unquote(path.removeprefix("/m/")))
        if page is None:
            self._send(404, _page("Not found", "", '<p><a href="/">all caught mail</a></p>'))
        else:
            self._send(200, page)

    def _send(self, status: int, page: str) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the terminal shows one line per caught message, not per page view


def _parse(path: Path, limit: int, *, headers_only: bool = False) -> EmailMessage | None:
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit and not headers_only:
        return None
    try:
        parsed = BytesParser(policy=policy.default).parsebytes(data, headersonly=headers_only)
    except (MessageError, ValueError, TypeError, IndexError, LookupError):
        return None
    assert isinstance(parsed, EmailMessage)  # policy.default makes EmailMessage
    return parsed


def _text_part(message: EmailMessage) -> str:
    try:
        part = message.get_body(preferencelist=("plain",))
        if part is None:
            html_part = message.get_body(preferencelist=("html",))
            return "(no text part)" if html_part is None else "(HTML only; open the file to see it)"
        return str(part.get_content())
    except (MessageError, ValueError, TypeError, LookupError, KeyError):
        return "(the text part cannot be decoded)"


def _header(value: object) -> str:
    try:
        return str(value)
    except (MessageError, ValueError, TypeError, IndexError, LookupError):
        return "(undecodable)"


def _e(text: str) -> str:
    """`text` safe in HTML: escaped, and every control character (bidirectional overrides
    included, which would reorder what is shown) spelled out as `\\u202e`; lines and tabs
    are kept."""
    visible = "".join(c if c.isprintable() or c in "\n\t" else _spelled(c) for c in text)
    return html.escape(visible, quote=True)


def _spelled(char: str) -> str:
    point = ord(char)
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def _page(title: str, note: str, body: str, *, refresh: bool = False) -> str:
    meta = '<meta http-equiv="refresh" content="5">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · Mailroom catcher</title><style>{_STYLE}</style></head>"
        f"<body><header><h1>Mailroom catcher · {_e(title)}</h1><p>{_e(note)}</p></header>"
        f"<main>{body}</main></body></html>"
    )
