"""The runtime: one asyncio event loop per process, in a daemon thread, for synchronous callers.

Celery task threads, the CLI and the sweeper are synchronous; the network modules are async.
`Runtime.submit`/`run` hand a coroutine to the process's one loop, so many task threads keep many
SMTP sessions in flight on it. The loop starts lazily on first use and belongs to the PID that
started it: after `os.fork()` the child starts its own on first use (the parent's loop thread
does not exist there). `stop()` cancels what is pending, closes the loop and joins the thread;
the next use starts a fresh loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_NAME = "mailroom-runtime"
_DEFAULT_GRACE = 10.0  # seconds cancelled tasks get to finish when the loop stops
_CLOSE_MARGIN = 1.0  # seconds stop() allows, past its timeout, for the loop to close


class _LoopThread(threading.Thread):
    """Runs one loop until it stops, then cancels what is left and closes it, as asyncio.run does.

    The cleanup lives here, after `run_forever` returns, so it happens however the loop was
    stopped, and callbacks queued just before the stop still run (their tasks get cancelled).
    """

    def __init__(self) -> None:
        super().__init__(name=THREAD_NAME, daemon=True)
        self.loop = asyncio.new_event_loop()
        self.grace = _DEFAULT_GRACE

    def run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                # A task that ignores cancellation must not hold up shutdown for ever.
                loop.run_until_complete(asyncio.wait(tasks, timeout=self.grace))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class Runtime:
    """A lazily started event loop in a daemon thread; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: _LoopThread | None = None
        self._pid = os.getpid()
        _instances.add(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop of this process, started if need be."""
        with self._lock:
            return self._started().loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; the returned future holds its result or exception.

        Cancelling the future cancels the coroutine.
        """
        with self._lock:
            # Scheduled under the lock, so stop() (which takes it first) never stops a loop
            # between our choosing it and queueing onto it.
            return asyncio.run_coroutine_threadsafe(coro, self._started().loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (or exception).

        :raises TimeoutError: after `timeout` seconds; the coroutine is then cancelled (its
            cleanup finishes on the loop after this returns).
        :raises concurrent.futures.CancelledError: when `stop()` cancelled it.
        :raises RuntimeError: when called from the loop's own thread, where it would deadlock.
        """
        if self._in_loop_thread():
            coro.close()  # never awaited otherwise, and Python would warn about that
            raise RuntimeError("Runtime.run() called from the runtime's own loop thread")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel pending tasks, stop and close the loop, and join its thread.

        Cancelled tasks get `timeout` seconds to finish; the loop then closes (at most a second
        later). The next use of the runtime starts a fresh loop.

        :raises RuntimeError: when called from the loop's own thread.
        """
        if self._in_loop_thread():
            raise RuntimeError("Runtime.stop() called from the runtime's own loop thread")
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
        thread.grace = timeout
        with contextlib.suppress(RuntimeError):  # the loop was stopped and closed already
            thread.loop.call_soon_threadsafe(thread.loop.stop)
        thread.join(timeout + _CLOSE_MARGIN)

    def _started(self) -> _LoopThread:
        """The loop thread, started if absent, dead, or inherited across a fork; lock held."""
        if self._pid != os.getpid() or (self._thread is not None and not self._thread.is_alive()):
            # A dead thread (its loop stopped behind our back) would leave every future
            # pending for ever; a fresh loop is the only useful answer.
            self._thread = None
            self._pid = os.getpid()
        if self._thread is None:
            thread = _LoopThread()
            thread.start()
            self._thread = thread
        return self._thread

    def _forget(self) -> None:
        """Drop the state of another process's loop (after a fork); never touch that loop."""
        self._lock = threading.Lock()
        self._thread = None
        self._pid = os.getpid()

    def _in_loop_thread(self) -> bool:
        # Waiting on the loop from its own thread would block the loop for ever.
        return self._thread is not None and self._thread is threading.current_thread()


_instances: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held a lock at the fork; it stays held for ever in
    # the child, so the child gets fresh locks and no loop.
    for instance in list(_instances):
        instance._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)

_process_runtime = Runtime()


def runtime() -> Runtime:
    """The process-wide runtime; its loop is this PID's (a forked child gets its own)."""
    return _process_runtime
