"""`with server:` for every test server: start on entry, stop on exit, whatever happened
(a start that fails part-way included)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self


class StartStop:
    """Context-manager support for a class with `start()` and `stop()`."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # whatever started before the failure (every `stop` is idempotent)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
