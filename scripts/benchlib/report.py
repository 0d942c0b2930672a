"""The human summaries of the scenarios' figures (the JSON object holds the same, and more)."""

from __future__ import annotations

from typing import Any, TextIO


def throughput_table(result: dict[str, Any], out: TextIO) -> None:
    """The summary of a cpu or latency run."""
    setup = result["setup"]
    split = result["cpu_ms_per_msg_split"]
    print(
        f"\n{result['scenario']}: {result['n']:,} messages (about {setup['text_bytes']:,} bytes "
        f"of text, 1 recipient) to {setup['destinations']} destination(s), sink delay "
        f"{setup['sink_delay_ms']:.0f} ms; {setup['workers']} workers x concurrency "
        f"{setup['concurrency']} (shards: {', '.join(setup['worker_shards'])} of "
        f"{setup['shards']}); MAX_CONNECTIONS *={setup['max_connections']}; producer chunks of "
        f"{setup['chunk']}; Redis {setup['redis_persistence']}; "
        f"DKIM {setup.get('dkim') or 'off'}",
        file=out,
    )
    each = ", ".join(f"{value:.1f}" for value in result["worker_rss_mb_each"])
    outcomes = ", ".join(f"{key} {value:,}" for key, value in result["outcomes"].items())
    rows = [
        ("end to end", f"{result['msgs_per_s']:,.0f} msg/s ({result['seconds']} s)"),
        ("producer alone", f"{result['producer_msgs_per_s']:,.0f} msg/s enqueued"),
        (
            "CPU per message",
            f"{result['cpu_ms_per_msg']:.3f} ms = producer {split['producer']:.3f} + workers "
            f"{split['workers']:.3f} + redis {split['redis']:.3f}",
        ),
        (
            "  not counted",
            f"sink {result['sink_cpu_ms_per_msg']:.3f} ms, dnsmasq "
            f"{result['dns_cpu_ms_per_msg']:.3f} ms (every process: "
            f"{result['cpu_ms_per_msg_all']:.3f} ms)",
        ),
        (
            "enqueue -> 250",
            f"p50 {result['p50_ms']:,.1f} ms, p99 {result['p99_ms']:,.1f} ms, "
            f"max {result['max_ms']:,.1f} ms",
        ),
        ("worker peak RSS", f"{result['worker_rss_mb']:.1f} MiB (each: {each})"),
        ("Redis per queued", f"{result['redis_bytes_per_msg']:,} bytes"),
        (
            "Redis calls/msg",
            f"{result['redis_calls_per_msg']}: "
            + ", ".join(f"{k} {v}" for k, v in result["redis_calls_per_msg_top"].items()),
        ),
        (
            "SMTP sessions",
            f"{result['smtp_sessions']:,} opened, {result['connections_used']:,} carried the "
            f"mail: {result['msgs_per_session']} messages per session",
        ),
        ("worker outcomes", f"{outcomes}; sink duplicates {result['duplicates']}"),
    ]
    for label, text in rows:
        print(f"  {label:<17} {text}", file=out)


def deferred_table(result: dict[str, Any], out: TextIO) -> None:
    """The summary of a deferred run."""
    setup = result["setup"]
    print(
        f"\ndeferred: {result['n']:,} deferred, {result['due']:,} of them made due to bounce; "
        f"one worker (concurrency {setup['concurrency']}, shards {setup['worker_shards']} of "
        f"{setup['shards']}); filled in {result['fill_seconds']} s; run "
        f"{result['run_seconds']:.0f} s; Redis {setup['redis_persistence']}",
        file=out,
    )
    head = ("worker RSS, MiB", "samples", "min", "median", "max", "deferred")
    print("  {:<16} {:>7} {:>8} {:>8} {:>8} {:>9}".format(*head), file=out)
    for name, row in result["rss_mb"].items():
        cells = "".join(
            f" {row[key]:>8.1f}" if row[key] is not None else f" {'-':>8}"
            for key in ("min", "median", "max")
        )
        count = result["deferred_count"][name]
        print(f"  {name:<16} {row['samples']:>7}{cells} {count:>9,}", file=out)
    growth = result["rss_growth_mb"]
    if growth is not None:
        print(f"  RSS with the set full minus idle (medians): {growth:+.1f} MiB", file=out)
    split, idle = result["cpu_ms_per_msg_split"], result["idle_cpu_ms_per_s"]
    print(
        f"  due: {result['due']:,} bounced (null MX) in {result['due_seconds']} s; the gate "
        f"throttled (deferred) them {result['due_throttled']:,} times on the way",
        file=out,
    )
    if result["moved"]:
        print(
            f"  mover: {result['moved']:,} made due at once, moved in {result['move_seconds']} s "
            f"({result['msgs_per_s']:,.0f}/s); CPU per delivery moved "
            f"{result['cpu_ms_per_msg'] * 1000:.1f} us = worker {split['workers'] * 1000:.1f} us"
            f" + redis {split['redis'] * 1000:.1f} us, above idle (worker {idle['workers']} "
            f"ms/s, redis {idle['redis']} ms/s)",
            file=out,
        )
    else:
        print("  mover: nothing left to move (--due covered every deferred delivery)", file=out)
    print(f"  Redis per deferred delivery: {result['redis_bytes_per_msg']:,} bytes", file=out)
