"""Tests for workers/runtime.py: one loop thread per process, shared by many synchronous callers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from workers.runtime import Runtime, runtime

CALLERS = 50


@pytest.fixture
def rt() -> Iterator[Runtime]:
    instance = Runtime()
    yield instance
    instance.stop()


async def _loop_and_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    return asyncio.get_running_loop(), threading.current_thread()


def test_many_threads_run_their_coroutines_concurrently_on_one_loop(rt: Runtime) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    seen: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
    start_together = threading.Barrier(CALLERS)

    async def session(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            seen.append((asyncio.get_running_loop(), threading.current_thread()))
        await asyncio.sleep(0.2)
        with lock:
            running -= 1
        return n * n

    def caller(n: int) -> tuple[int, threading.Thread]:
        start_together.wait()
        return rt.run(session(n), timeout=10), threading.current_thread()

    with concurrent.futures.ThreadPoolExecutor(max_workers=CALLERS) as pool:
        results = list(pool.map(caller, range(CALLERS)))

    assert [value for value, _ in results] == [n * n for n in range(CALLERS)]
    loop_threads = {thread for _, thread in seen}
    assert len(seen) == CALLERS
    assert all(loop is rt.loop for loop, _ in seen)
    assert len(loop_threads) == 1
    assert loop_threads.isdisjoint(thread for _, thread in results)  # not the callers' threads
    assert peak > 1  # sessions overlapped: the loop did not run them one after another


def test_submit_returns_a_future_with_the_result(rt: Runtime) -> None:
    future = rt.submit(_loop_and_thread())
    loop, thread = future.result(timeout=5)
    assert loop is rt.loop
    assert thread is not threading.current_thread()


def test_run_raises_what_the_coroutine_raises(rt: Runtime) -> None:
    async def fails() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        rt.run(fails(), timeout=5)


def test_run_timeout_raises_and_cancels_the_coroutine(rt: Runtime) -> None:
    cancelled = threading.Event()

    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"within 0\.1 s"):
        rt.run(hangs(), timeout=0.1)
    assert cancelled.wait(timeout=5)
    loop, _ = rt.run(_loop_and_thread(), timeout=5)  # the loop itself carries on
    assert not loop.is_closed()


def test_stop_cancels_pending_coroutines_and_closes_the_loop(rt: Runtime) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def long_session() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop, loop_thread = rt.run(_loop_and_thread(), timeout=5)
    future = rt.submit(long_session())
    assert started.wait(timeout=5)
    rt.stop(timeout=5)
    assert cancelled.is_set()
    assert future.cancelled()
    assert loop.is_closed()
    assert not loop_thread.is_alive()


def test_run_after_stop_starts_a_fresh_loop(rt: Runtime) -> None:
    first, first_thread = rt.run(_loop_and_thread(), timeout=5)
    rt.stop()
    second, second_thread = rt.run(_loop_and_thread(), timeout=5)
    assert first.is_closed()
    assert second is not first
    assert not second.is_closed()
    assert not first_thread.is_alive()
    assert second_thread.is_alive()


def test_a_loop_stopped_behind_its_back_is_replaced(rt: Runtime) -> None:
    first = rt.loop
    first.call_soon_threadsafe(first.stop)
    rt.stop()  # joins nothing, raises nothing: that loop is gone already
    second, _ = rt.run(_loop_and_thread(), timeout=5)
    assert second is not first


def test_stop_without_a_loop_does_nothing() -> None:
    instance = Runtime()
    instance.stop()
    instance.stop()


def test_run_from_the_loop_thread_is_refused_not_deadlocked(rt: Runtime) -> None:
    async def nested() -> None:
        rt.run(_loop_and_thread(), timeout=1)

    with pytest.raises(RuntimeError, match="own loop thread"):
        rt.run(nested(), timeout=5)


def test_runtime_is_one_instance_per_process() -> None:
    assert runtime() is runtime()


def _report_from_child(conn: Connection, parent_loop: asyncio.AbstractEventLoop) -> None:
    loop, thread = runtime().run(_loop_and_thread(), timeout=5)
    conn.send((os.getpid(), loop is not parent_loop, loop.is_running(), thread.is_alive()))
    conn.close()


# Python 3.12+ warns when forking a process that has threads; forking one is what this checks.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_its_own_loop_even_if_forked_mid_call() -> None:
    shared = runtime()
    parent_loop, _ = shared.run(_loop_and_thread(), timeout=5)
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_report_from_child, args=(sender, parent_loop))
    try:
        # Fork while the runtime's lock is held, as when another thread is inside submit():
        # the child must not inherit a lock that nobody will ever release.
        with shared._lock:
            child.start()
        sender.close()
        assert receiver.poll(timeout=10), "the child reported nothing (deadlocked?)"
        child_pid, new_loop, running, alive = receiver.recv()
        child.join(timeout=5)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        receiver.close()
        shared.stop()
    assert child_pid == child.pid != os.getpid()
    assert new_loop
    assert running
    assert alive
