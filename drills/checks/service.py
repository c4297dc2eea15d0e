"""Application-level checks over HTTP: health, a count through the API, an upload served back.

Each check records its evidence into the drill record and never raises on a failed
expectation, so every check runs and the report shows them all. Every request is bounded
(connect and read timeouts); a refused connection, a timeout or a body that is not what the
API promises is a failed check naming what happened.

    >>> check_health(record, api.url("/health"))                       # doctest: +SKIP
    >>> check_count(record, api.url("/users/count"), db_count)          # doctest: +SKIP
    >>> check_upload(record, api.url("/uploads/a.png"), sha, size)      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import time
from urllib.parse import unquote, urlsplit

import requests

from drills.record import Check, DrillRecord

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
CHUNK = 1 << 16
BODY_SHOWN = 200
POLL_INTERVAL = 0.5
# Where the application serves a stored upload (the sample app's route; [app] has no key for
# it yet).
UPLOADS_URL_PATH = "/uploads/"


def check_health(
    record: DrillRecord, url: str, *, within: float = 0.0, timeout: float = READ_TIMEOUT
) -> Check:
    """GET the health path until it answers 200 or `within` seconds pass (0: ask once).

    Anything but 200 at the end fails, with the body's reason (or the error) as the detail.
    """
    name = f"GET {_path(url)} answers 200"
    deadline = time.monotonic() + within
    while True:
        started = time.monotonic()
        try:
            response = requests.get(url, timeout=(CONNECT_TIMEOUT, timeout))
        except requests.RequestException as exc:
            failure = f"GET {_path(url)}: no answer: {_request_error(exc)}"
        else:
            if response.status_code == 200:
                seconds = time.monotonic() - started
                return record.check(name, True, f"200 in {seconds:.3f} s")
            failure = f"GET {_path(url)} answered {response.status_code}: {_reason(response)}"
        if time.monotonic() >= deadline:
            waited = f" (still, after {within:.0f} s)" if within else ""
            return record.check(name, False, failure + waited)
        time.sleep(POLL_INTERVAL)


def check_count(
    record: DrillRecord, url: str, expected: int, *, timeout: float = READ_TIMEOUT
) -> Check:
    """GET a count path answering {"count": N}: N must equal the count in the database."""
    name = "user count through the API equals the database's"
    try:
        response = requests.get(url, timeout=(CONNECT_TIMEOUT, timeout))
    except requests.RequestException as exc:
        return record.check(name, False, f"GET {_path(url)}: no answer: {_request_error(exc)}")
    if response.status_code != 200:
        return record.check(
            name, False, f"GET {_path(url)} answered {response.status_code}: {_reason(response)}"
        )
    try:
        count = response.json()["count"]
    except (ValueError, KeyError, TypeError):
        return record.check(
            name, False, f'GET {_path(url)}: expected {{"count": N}}, got {_body(response)}'
        )
    if isinstance(count, bool) or not isinstance(count, int):
        return record.check(name, False, f"GET {_path(url)}: count is not an integer: {count!r}")
    return record.check(
        name, count == expected, f"API {count}, database {expected} (GET {_path(url)})"
    )


def check_upload(
    record: DrillRecord,
    url: str,
    sha256: str,
    size: int | None = None,
    *,
    timeout: float = READ_TIMEOUT,
) -> Check:
    """GET one restored upload through the API: its bytes must hash to `sha256`."""
    path = _path(url)
    name = "a restored upload is served byte-identical"
    try:
        with requests.get(url, timeout=(CONNECT_TIMEOUT, timeout), stream=True) as response:
            if response.status_code != 200:
                return record.check(
                    name, False, f"GET {path} answered {response.status_code}: {_reason(response)}"
                )
            digest, served = hashlib.sha256(), 0
            for block in response.iter_content(CHUNK):
                digest.update(block)
                served += len(block)
    except requests.RequestException as exc:
        return record.check(name, False, f"GET {path}: {_request_error(exc)}")
    if digest.hexdigest() != sha256.lower():
        return record.check(
            name,
            False,
            f"GET {path}: {served} bytes, sha256 {digest.hexdigest()[:16]}…, "
            f"expected {sha256[:16]}…" + (f" ({size} bytes)" if size is not None else ""),
        )
    return record.check(name, True, f"GET {path}: {served} bytes, sha256 {sha256[:16]}… equal")


def _path(url: str) -> str:
    return unquote(urlsplit(url).path) or "/"


def _reason(response: requests.Response) -> str:
    """The reason an API gives for a failure: a JSON reason/error field, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return _body(response)
    if isinstance(body, dict):
        for key in ("reason", "error", "message", "detail", "status"):
            if isinstance(body.get(key), str) and body[key].strip():
                return _one_line(body[key])[:BODY_SHOWN]
    return json.dumps(body)[:BODY_SHOWN]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _body(response: requests.Response) -> str:
    text = _one_line(response.text)
    if not text:
        return "(empty body)"
    return text[:BODY_SHOWN] + ("…" if len(text) > BODY_SHOWN else "")


def _request_error(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    return type(exc).__name__
