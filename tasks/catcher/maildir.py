"""A Maildir (https://cr.yp.to/proto/maildir.html) that any mail client can open: each message
written to `tmp/` under a name unique to this host, process and moment, flushed to disk, then
linked into `new/`. Reading lists `new/` and `cur/` newest first, and never follows a name that
is not a plain Maildir file name (the web page passes names back in)."""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

_SUBDIRS = ("tmp", "new", "cur")
# Unique names are digits, letters, dots, "," and "=" (flags after ":2," in cur/), and the
# escapes of "/" and ":" in a host name (\057, \072).
_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._,=\\-]{0,200}(:2,[A-Za-z]{0,26})?")
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Stored:
    """One message in the Maildir: its file name and where it lies (`new` or `cur`)."""

    folder: str
    name: str
    size: int
    mtime: float


class Maildir:
    """The catcher's Maildir at `root` (created with its tmp/, new/ and cur/ when missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> None:
        """Make the three folders (mode 0700: caught mail may hold anything)."""
        for sub in _SUBDIRS:
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, content: bytes) -> Path:
        """Write `content` as one new message; returns its path in new/."""
        while True:
            name = _unique_name()
            tmp = self.root / "tmp" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another writer took this name: the counter makes the next one new
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)  # on disk before it appears in new/, as the Maildir spec asks
            finally:
                os.close(fd)
            target = self.root / "new" / name
            try:
                os.link(tmp, target)
            except FileExistsError:
                os.unlink(tmp)
                continue
            os.unlink(tmp)
            return target

    def messages(self, limit: int) -> list[Stored]:
        """The newest `limit` messages of new/ and cur/, newest first."""
        found: list[Stored] = []
        for folder in ("new", "cur"):
            try:
                entries = list(os.scandir(self.root / folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if _NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append(Stored(folder, entry.name, stat.st_size, stat.st_mtime))
        found.sort(key=lambda stored: (stored.mtime, stored.name), reverse=True)
        return found[:limit]

    def find(self, name: str) -> Path | None:
        """The file of message `name` in new/ or cur/, or None (also for a name that is not a
        Maildir file name, such as one with a path in it)."""
        if not _NAME.fullmatch(name):
            return None
        for folder in ("new", "cur"):
            path = self.root / folder / name
            if path.is_file() and not path.is_symlink():
                return path
        return None


def _unique_name() -> str:
    """`<seconds>.M<microseconds>P<pid>Q<counter>.<host>`, the spec's modern unique name."""
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}.{host or 'localhost'}"
