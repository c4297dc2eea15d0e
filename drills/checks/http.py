"""Requests to the application under drill, and the history of what it answered.

`AppClient` sends every request with the configured headers, whose values come from
environment variables and never reach a report: evidence names the header and the variable
only. Every request is bounded (connect and read timeouts). `Answers` keeps what a polled
path answered, to be told in one line: "no answer (connection refused) × 3 over 1.0 s, then
503 × 40 over 20.0 s, then 200".

    >>> client = AppClient.from_settings({"X-Health-Token": "HEALTH_TOKEN"})  # doctest: +SKIP
    >>> client.get(app.url("/health")).status_code                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import requests

from drills.config.errors import ConfigError

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
BODY_SHOWN = 200


class AppClient:
    """HTTP to the app with the drill's headers; `described` says which, never their values."""

    def __init__(self, headers: Mapping[str, str] | None = None, variables: str = "") -> None:
        self._headers = dict(headers or {})
        self.described = variables

    @classmethod
    def from_settings(
        cls, headers: Mapping[str, str], environ: Mapping[str, str] | None = None
    ) -> AppClient:
        """Headers from `[app] headers` (header -> NAME of the variable holding its value).

        A variable that is not set fails at once (ConfigError, exit 2), naming it.
        """
        environ = os.environ if environ is None else environ
        missing = [f"{var} (for {name})" for name, var in headers.items() if not environ.get(var)]
        if missing:
            raise ConfigError(
                f"[app] headers: the environment variable {', '.join(missing)} is not set or "
                "empty; set it in the drill's environment"
            )
        values = {header: environ[var] for header, var in headers.items()}
        named = ", ".join(f"{header} from ${var}" for header, var in headers.items())
        return cls(values, named)

    @property
    def sends_headers(self) -> bool:
        """Whether any header is configured."""
        return bool(self._headers)

    def get(self, url: str, *, stream: bool = False, timeout: float = READ_TIMEOUT):
        """GET `url` with the headers, bounded."""
        return requests.get(
            url, headers=self._headers, timeout=(CONNECT_TIMEOUT, timeout), stream=stream
        )


@dataclass
class Answers:
    """What one polled path answered, in order, with the time of each answer."""

    started: float = field(default_factory=time.monotonic)
    seen: list[tuple[float, str]] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        """Note one answer ("200", "503", "no answer (timed out)")."""
        self.seen.append((time.monotonic() - self.started, outcome))

    @property
    def elapsed(self) -> float:
        """Seconds since the first request."""
        return time.monotonic() - self.started

    def story(self) -> str:
        """The answers as runs: "503 × 40 over 20.0 s, then 200"."""
        runs: list[list] = []
        for at, outcome in self.seen:
            if runs and runs[-1][0] == outcome:
                runs[-1][2], runs[-1][3] = at, runs[-1][3] + 1
            else:
                runs.append([outcome, at, at, 1])
        told = []
        for outcome, first, last, count in runs:
            told.append(outcome if count == 1 else f"{outcome} × {count} over {last - first:.1f} s")
        return ", then ".join(told)


def outcome_of(response: requests.Response | None, error: Exception | None = None) -> str:
    """One answer in a word or two: the status, or why there was none."""
    if response is not None:
        return str(response.status_code)
    return f"no answer ({request_error(error)})"


def path_of(url: str) -> str:
    """The path of a URL, as a person wrote it."""
    return unquote(urlsplit(url).path) or "/"


def reason(response: requests.Response) -> str:
    """The reason an API gives for a failure: a JSON reason/error field, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return body_start(response)
    if isinstance(body, dict):
        for key in ("reason", "error", "message", "detail", "status"):
            if isinstance(body.get(key), str) and body[key].strip():
                return _one_line(body[key])[:BODY_SHOWN]
    return json.dumps(body)[:BODY_SHOWN]


def body_start(response: requests.Response) -> str:
    """The start of a body, on one line."""
    text = _one_line(response.text)
    if not text:
        return "(empty body)"
    return text[:BODY_SHOWN] + ("…" if len(text) > BODY_SHOWN else "")


def request_error(exc: Exception | None) -> str:
    """Why a request got no answer, in words."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    return type(exc).__name__ if exc is not None else "no request made"


def _one_line(text: str) -> str:
    return " ".join(text.split())
