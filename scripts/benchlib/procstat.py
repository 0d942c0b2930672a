"""CPU time and resident memory of processes, read from /proc (Linux only).

CPU is utime + stime of the process (every thread counts: /proc/PID/stat sums them) plus what
its waited-for children used (cutime + cstime, e.g. redis-server's AOF rewrite fork) plus its
live descendants, so a figure is the whole process tree's. RSS is VmRSS, sampled; `peak_kib`
also reads VmHWM, the kernel's own high-water mark, so a peak between two samples is not lost.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# Fields of /proc/PID/stat after the ")" that ends the command name (0-based): state is 0.
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """Live children of `pid` (by scanning /proc: /proc/PID/task/*/children may be compiled out)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[_PPID]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU seconds used so far by `pid` (user + system), with its children's when `descendants`.

    :raises OSError: the process no longer exists.
    """
    fields = _stat_fields(pid)
    ticks = int(fields[_UTIME]) + int(fields[_STIME])
    if descendants:
        ticks += int(fields[_CUTIME]) + int(fields[_CSTIME])
    total = ticks / _TICKS
    if descendants:
        for child in _children(pid):
            try:
                total += cpu_seconds(child)
            except OSError:
                continue  # exited between the scan and the read; its time is in our cutime now
    return total


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} for pid {pid}")


def rss_kib(pid: int) -> int:
    """The resident set size of `pid` now, in KiB (VmRSS).

    :raises OSError: the process no longer exists.
    """
    return _status_kib(pid, "VmRSS")


def peak_kib(pid: int) -> int:
    """The highest resident set size `pid` ever had, in KiB (VmHWM).

    :raises OSError: the process no longer exists.
    """
    return _status_kib(pid, "VmHWM")


class RssSampler:
    """Samples VmRSS of some processes every `every` seconds in a daemon thread, keeping peaks."""

    def __init__(self, pids: Iterable[int], every: float = 0.5) -> None:
        self.pids = list(pids)
        self._every = every
        self._lock = threading.Lock()
        self._samples: dict[int, list[int]] = {pid: [] for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample_now(self) -> None:
        """Take one sample of every process (ones that exited are skipped)."""
        for pid in self.pids:
            try:
                value = rss_kib(pid)
            except OSError:
                continue
            with self._lock:
                self._samples[pid].append(value)

    def samples(self, pid: int) -> list[int]:
        """Every sample of `pid` so far, in KiB."""
        with self._lock:
            return list(self._samples[pid])

    def mark(self) -> dict[int, int]:
        """How many samples each process has now, to slice a phase's samples out later."""
        with self._lock:
            return {pid: len(values) for pid, values in self._samples.items()}

    def since(self, mark: dict[int, int]) -> dict[int, list[int]]:
        """The samples taken since `mark`, per process."""
        with self._lock:
            return {pid: list(values[mark[pid] :]) for pid, values in self._samples.items()}

    def peak(self, pid: int) -> int:
        """The largest RSS seen for `pid`: max of the samples and of VmHWM while it runs."""
        best = max(self.samples(pid), default=0)
        with contextlib.suppress(OSError):  # it exited: the samples are all there is
            best = max(best, peak_kib(pid))
        return best

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self._every)
