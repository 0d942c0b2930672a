"""Benchmark: how fast tasks.message.build_message turns notifications into MIME bytes.

Builds N typical notifications (text + html, two recipients, about 2 KB) and a few variants,
repeats each run, and prints the median cost per message (wall time, and this process's CPU
time, which a busy machine disturbs less), messages per second and peak RSS. For comparison,
the same typical message is also built the textbook way, with the stdlib's `EmailMessage` and
its default policy. Bounded: at most --count messages per run (the 1 MB variant builds
count/1000, the one with a 100 KB attachment count/100, the stdlib one count/10), --repeat runs,
and no new run starts after --time-limit seconds. Runs on one core, with no network.

    PYTHONPATH=. .venv/bin/python scripts/bench_message.py [--count 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from tasks.message import build_message
from tasks.notification import Notification

MAX_BYTES = 26_214_400
NOW = datetime(2026, 1, 1, tzinfo=UTC)
_PARAGRAPH = (
    "Hello Alice,\n\nYour order #12345 has shipped and is on its way. You can follow the "
    "parcel at https://shop.example.com/track/12345 and reply to this message with any "
    "question.\n\n"
)


@dataclass(frozen=True)
class Variant:
    """One kind of notification to build, and how many per run (relative to --count)."""

    name: str
    fields: dict[str, Any]
    divisor: int = 1
    validate_only: bool = False
    stdlib: bool = False  # build with email.message.EmailMessage instead


def typical_fields(**overrides: Any) -> dict[str, Any]:
    text = _PARAGRAPH * 5  # about 1 KB of text, and as much again as HTML
    fields: dict[str, Any] = {
        "sender": "Example Shop <orders@shop.example.com>",
        "to": ["Alice Example <alice@example.org>", "bob@example.net"],
        "subject": "Your order #12345 has shipped",
        "text": text,
        "html": "<html><body><p>" + text.replace("\n\n", "</p>\n<p>") + "</p></body></html>\n",
        "headers": {"List-Unsubscribe": "<https://shop.example.com/unsubscribe/abc123>"},
    }
    fields.update(overrides)
    return fields


def variants() -> list[Variant]:
    line = "Grüße aus Köln: your monthly statement, with every détail you asked for.\n"
    big = line * (1_000_000 // len(line))
    return [
        Variant("typical: text+html, 2 rcpt", typical_fields()),
        Variant("text only", typical_fields(html=None)),
        Variant(
            "non-ASCII subject and name",
            typical_fields(
                subject="Ihre Bestellung #12345 wurde versandt — Grüße 🎉",
                to=["Zoë Müller <zoe@example.org>", "bob@example.net"],
            ),
        ),
        Variant("1 MB body (text+html, QP)", typical_fields(text=big, html=big), divisor=1000),
        Variant(
            "typical + 100 KB PDF attached",
            typical_fields(attachments=[{"filename": "invoice.pdf", "content": _pdf_like()}]),
            divisor=100,
        ),
        Variant("validate_dict only (typical)", typical_fields(), validate_only=True),
        Variant("stdlib EmailMessage (typical)", typical_fields(), divisor=10, stdlib=True),
    ]


def _pdf_like(size: int = 100_000) -> bytes:
    """Bytes shaped like a PDF: a header, then compressed (incompressible) streams."""
    return (b"%PDF-1.7\n" + random.Random(7).randbytes(size))[:size]


def stdlib_message(notification: Notification, message_id: str) -> bytes:
    """The notification built with the stdlib's EmailMessage and default policy."""
    message = EmailMessage()  # policy.default
    message["Message-ID"] = f"<{message_id}@mx.example.net>"
    message["Date"] = format_datetime(NOW)
    message["From"] = notification.sender
    message["To"] = ", ".join(notification.to)
    message["Subject"] = notification.subject
    for name, value in notification.headers.items():
        message[name] = value
    message.set_content(notification.text or "")
    if notification.html is not None:
        message.add_alternative(notification.html, subtype="html")
    return message.as_bytes(policy=policy.SMTP)


def run_once(variant: Variant, count: int) -> tuple[float, float]:
    """Seconds (wall, CPU) to validate, or build, `count` messages of `variant`."""
    wall, cpu = time.perf_counter(), time.process_time()
    if variant.validate_only:
        data = variant.fields
        for _ in range(count):
            Notification.validate_dict(data)
        return time.perf_counter() - wall, time.process_time() - cpu
    notification = Notification.validate_dict(variant.fields)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        build(variant, notification, f"bench{index}")
    return time.perf_counter() - wall, time.process_time() - cpu


def build(variant: Variant, notification: Notification, message_id: str) -> bytes:
    if variant.stdlib:
        return stdlib_message(notification, message_id)
    return build_message(
        notification,
        message_id=message_id,
        helo_domain="mx.example.net",
        max_bytes=MAX_BYTES,
        now=NOW,
    ).data


def message_size(variant: Variant) -> int:
    return len(build(variant, Notification.validate_dict(variant.fields), "size"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds, all told")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        print("bench_message: --count and --repeat must be at least 1", file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.time_limit
    print(f"Python {sys.version.split()[0]}, {args.repeat} runs per variant, median shown\n")
    header = (
        f"{'variant':<30} {'msgs/run':>8} {'runs':>4} {'bytes':>9} {'µs/msg':>10} "
        f"{'CPU µs/msg':>10} {'msgs/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for variant in variants():
        count = max(1, args.count // variant.divisor)
        timings: list[tuple[float, float]] = []
        while len(timings) < args.repeat and (not timings or time.monotonic() < deadline):
            timings.append(run_once(variant, count))
        per_message = statistics.median(wall for wall, _ in timings) / count
        cpu_per_message = statistics.median(cpu for _, cpu in timings) / count
        size = "-" if variant.validate_only else str(message_size(variant))
        print(
            f"{variant.name:<30} {count:>8} {len(timings):>4} {size:>9} "
            f"{per_message * 1e6:>10.1f} {cpu_per_message * 1e6:>10.1f} {1 / per_message:>9.0f}"
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"\npeak RSS: {peak_kib / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
