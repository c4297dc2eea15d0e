"""Who hears of a run, and what dashboards read of it: `[notify]` and `[metrics]`.

- `message`: the words (the verdict, the failed drills and their causes, the report);
- `webhook`: a Slack-compatible JSON message and the dead-man's-switch ping, over HTTP;
- `mail`: the e-mail over SMTP with the report attached;
- `metrics`: Prometheus text for node_exporter's textfile collector and a pushgateway.

This module sends to every configured channel side by side, each bounded by its timeout, and
says on stderr what each did (stdout may be JSON). A channel that fails is reported there and
in drill.json under `notifications`, never raised: a notification never changes an exit code,
and a hung one is given up. `drill run` calls `announce_run` once drill.json is final and
`announce_incomplete` when there is none; `drill status --notify` calls `announce_status`:

>>> finalize_run(run_dir, config, announce=lambda doc: announce_run(doc, run_dir, config))
... # doctest: +SKIP

It reads the drill record and the status only (a contract in pyproject.toml says so).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from drills.config.schema import Config, redact_text
from drills.notify import mail, metrics, webhook
from drills.notify.message import (
    Message,
    incomplete_message,
    run_message,
    status_message,
)

__all__ = ["Delivery", "announce_incomplete", "announce_run", "announce_status"]

# Beyond a channel's own socket timeouts, what it may take before it is given up.
GRACE = 2.0


@dataclass(frozen=True)
class Delivery:
    """What one channel did: its name, whether it delivered, and in words what happened."""

    channel: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The JSON form in drill.json's `notifications`."""
        return {
            "channel": self.channel,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


def announce_run(
    document: dict, run_dir: Path, config: Config, *, stream: TextIO | None = None
) -> dict:
    """Tell the configured channels of a finished run; {"notifications": [...]} for drill.json."""
    try:
        message = run_message(document, run_dir, config)
        finished = _time(document.get("finished_at"))
        text = metrics.run_metrics(document, config.estate.name, finished, message.passed)
        deliveries = _send(_jobs(config, message, text), config, stream)
    except Exception as exc:  # a notification must never break the run it reports
        deliveries = [_broken(exc, stream)]
    return {"notifications": [d.as_dict() for d in deliveries]}


def announce_incomplete(
    run_dir: Path, config: Config, reason: str, *, stream: TextIO | None = None
) -> list[Delivery]:
    """Tell the channels of a run that did not complete (a failure: there is no verdict)."""
    try:
        message = incomplete_message(run_dir, config, reason)
        text = metrics.run_metrics(None, config.estate.name, datetime.now(UTC), False)
        return _send(_jobs(config, message, text), config, stream)
    except Exception as exc:  # a notification must never break the run it reports
        return [_broken(exc, stream)]


def announce_status(
    status: dict, config: Config, *, stream: TextIO | None = None
) -> list[Delivery]:
    """Send `drill status`'s findings through the webhook and the e-mail: when something needs
    attention, or always with `[notify] when = "always"`."""
    try:
        message = status_message(status, config)
        tell = not message.passed or config.notify.when == "always"
        jobs = _jobs(config, message, None) if tell else {}
        jobs = {k: v for k, v in jobs.items() if k in ("webhook", "email")}
        jobs |= _status_metrics(status, config)  # every time: the age is the metric
        return _send(jobs, config, stream) if jobs else []
    except Exception as exc:  # a notification must never change what the status says
        return [_broken(exc, stream)]


def _status_metrics(status: dict, config: Config) -> dict[str, Callable[[], str]]:
    wanted = config.metrics
    text = metrics.status_metrics(status, config.estate.name, datetime.now(UTC))
    jobs: dict[str, Callable[[], str]] = {}
    if wanted.textfile:
        path = metrics.status_textfile(Path(wanted.textfile))
        jobs["status metrics textfile"] = lambda: metrics.write_textfile(path, text)
    if wanted.pushgateway_url:
        jobs["status pushgateway"] = lambda: metrics.push(
            wanted.pushgateway_url, f"{wanted.job}-status", config.estate.name, text, wanted.timeout
        )
    return jobs


def _broken(exc: Exception, stream: TextIO | None) -> Delivery:
    found = Delivery("notify", False, redact_text(f"{type(exc).__name__}: {exc}"))
    print(f"drill: notify FAILED: {found.detail} (the exit code stands)", file=stream or sys.stderr)
    return found


def _jobs(config: Config, message: Message, text: str | None) -> dict[str, Callable[[], str]]:
    notify, wanted = config.notify, config.metrics
    timeout = notify.timeout
    tell = not message.passed or notify.when == "always"
    jobs: dict[str, Callable[[], str]] = {}
    if notify.webhook_url and tell:
        jobs["webhook"] = lambda: webhook.post_message(notify.webhook_url, message, timeout)
    if notify.smtp_host and tell:
        jobs["email"] = lambda: mail.send_mail(notify, message, timeout)
    if notify.ping_url and message.passed:
        jobs["ping"] = lambda: webhook.ping(notify.ping_url, timeout)
    if text is not None and wanted.textfile:
        jobs["metrics textfile"] = lambda: metrics.write_textfile(Path(wanted.textfile), text)
    if text is not None and wanted.pushgateway_url:
        jobs["pushgateway"] = lambda: metrics.push(
            wanted.pushgateway_url, wanted.job, config.estate.name, text, wanted.timeout
        )
    return jobs


def _send(
    jobs: dict[str, Callable[[], str]], config: Config, stream: TextIO | None
) -> list[Delivery]:
    """Run every job in its own thread; wait for each at most its bound; report each."""
    stream = stream or sys.stderr
    results: dict[str, Delivery] = {}

    started = time.monotonic()

    def attempt(name: str, job: Callable[[], str]) -> None:
        try:
            ok, detail = True, job()
        except webhook.ChannelError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # a notification must never break the run it reports
            ok, detail = False, redact_text(f"{type(exc).__name__}: {exc}")
        results[name] = Delivery(name, ok, detail, time.monotonic() - started)

    threads = {
        name: threading.Thread(target=attempt, args=(name, job), daemon=True, name=f"notify-{name}")
        for name, job in jobs.items()
    }
    for thread in threads.values():
        thread.start()
    bound = max(config.notify.timeout, config.metrics.timeout) + GRACE
    deliveries = []
    for name, thread in threads.items():
        thread.join(max(0.0, started + bound - time.monotonic()))
        given_up = Delivery(name, False, f"gave up after {bound:g}s", time.monotonic() - started)
        found = results.get(name) or given_up
        deliveries.append(found)
        if found.ok:
            print(f"drill: notify {name}: {found.detail}", file=stream)
        else:
            print(
                f"drill: notify {name} FAILED: {found.detail} (the run's verdict and exit "
                "code stand)",
                file=stream,
            )
    return deliveries


def _time(text: str | None) -> datetime:
    try:
        return datetime.fromisoformat(text) if text else datetime.now(UTC)
    except ValueError:
        return datetime.now(UTC)
