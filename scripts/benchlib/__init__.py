"""Pieces of the end-to-end benchmark (scripts/bench_e2e.py), each a small module.

scenarios     what the cpu and latency scenarios send, where, and the deployment's settings
throughput    the cpu and latency runs: producer → Redis → workers → sink, timed end to end
deferred      the deferred run: worker RSS with 100,000 deferred, and the mover's cost
report        the human summaries (the JSON object carries the same figures)
procstat      CPU time and RSS of processes, read from /proc
redis_server  a throwaway redis-server with production-like persistence (AOF, fsync each second)
smtp_sink     a cheap SMTP sink: a raw asyncio Protocol, stdlib only, run in its own process
sink          the harness's side of the sink: start it, read its event stream
zones         the dnsmasq zones of the scenarios
workers       `mailroom worker` subprocesses: start, wait until they answer, stop
stats         percentiles, units, the progress line, the JSON object

Benchmarks talk only to loopback and stop every process they start, by PID.
"""
