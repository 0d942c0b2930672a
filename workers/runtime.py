"""The runtime: one asyncio event loop per process, in a daemon thread, for synchronous callers.

Celery task threads, the CLI and the sweeper are synchronous; the network modules are async.
`Runtime.submit`/`run` hand a coroutine to the process's one loop, so many task threads keep many
SMTP sessions in flight on it. The loop starts lazily on first use and belongs to the PID that
started it: after `os.fork()` the child starts its own on first use (the parent's loop thread
does not exist there). `stop()` cancels what is pending and joins the thread; the next use
starts a fresh loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_THREAD_NAME = "mailroom-runtime"


class Runtime:
    """A lazily started event loop in a daemon thread; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _instances.add(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop of this process, started if need be."""
        with self._lock:
            return self._started()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; the returned future holds its result or exception.

        Cancelling the future cancels the coroutine.
        """
        with self._lock:
            # Scheduled under the lock so stop() can't stop the loop between the two steps,
            # which would leave a future that never completes.
            return asyncio.run_coroutine_threadsafe(coro, self._started())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (or exception).

        :raises TimeoutError: after `timeout` seconds; the coroutine is then cancelled (its
            cleanup finishes on the loop after this returns).
        :raises concurrent.futures.CancelledError: when `stop()` cancelled it.
        :raises RuntimeError: when called from the loop's own thread, where it would deadlock.
        """
        self._refuse_loop_thread("run")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel pending tasks, stop the loop and join its thread, waiting at most `timeout` s.

        :raises RuntimeError: when called from the loop's own thread.
        """
        self._refuse_loop_thread("stop")
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is None or thread is None or self._pid != os.getpid():
                return
        deadline = time.monotonic() + timeout
        try:
            drained = asyncio.run_coroutine_threadsafe(_cancel_pending(), loop)
            drained.result(timeout)
        except (TimeoutError, RuntimeError):
            pass  # a task that ignores cancellation must not hold up shutdown for ever
        loop.call_soon_threadsafe(loop.stop)
        thread.join(max(0.0, deadline - time.monotonic()))

    def _started(self) -> asyncio.AbstractEventLoop:
        """The loop, started if absent, dead, or inherited across a fork; the lock is held."""
        if self._pid != os.getpid() or (self._thread is not None and not self._thread.is_alive()):
            # A dead thread (someone stopped the loop behind our back) would leave every
            # future pending for ever; a fresh loop is the only useful answer.
            self._loop = self._thread = None
            self._pid = os.getpid()
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve, args=(loop,), name=_THREAD_NAME, daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def _forget(self) -> None:
        """Drop the state of another process's loop (after a fork); never touch that loop."""
        self._lock = threading.Lock()
        self._loop = self._thread = None
        self._pid = os.getpid()

    def _refuse_loop_thread(self, method: str) -> None:
        if self._thread is not None and self._thread is threading.current_thread():
            raise RuntimeError(f"Runtime.{method}() called from the runtime's own loop thread")


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    await asyncio.get_running_loop().shutdown_asyncgens()


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
