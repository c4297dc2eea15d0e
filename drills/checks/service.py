"""Application-level checks over HTTP: up and healthy, holding, counting, serving, answering.

Each check records its evidence into the drill record and never raises on a failed
expectation, so every check runs and the report shows them all; a check about the app
names its container, whose logs the report then shows. Health is told as the history of
its answers ("503 × 40 over 20.0 s, then 200"), not the last one.

- `check_health`: polls the health path until it answers 200, the app's containers
  watched on the way (one that exits fails at once, with its logs); a 401 or 403 fails at
  once, naming the credential the drill did not send or that was refused.
- `check_holds`: after the first healthy answer, the app must stay healthy for the soak
  time: polled, each container's state looked at (exited, restarted, unhealthy fails).
- `check_still_up`: the containers are still running after the last check.
- `check_count`, `check_upload`, `check_smoke`: what the app answers on the restored data.

    >>> client = AppClient.from_settings(settings.headers)                    # doctest: +SKIP
    >>> if check_health(record, app, client, "/health", within=60):           # doctest: +SKIP
    ...     check_holds(record, app, client, "/health", soak=10)
"""

from __future__ import annotations

import hashlib
import time

import requests

from drills.checks.http import (
    Answers,
    AppClient,
    body_start,
    outcome_of,
    path_of,
    reason,
    request_error,
)
from drills.record import Check, DrillRecord
from drills.runtime.api import RunningApp

CHUNK = 1 << 16
POLL_INTERVAL = 0.5
LOG_LINES = 30


def check_health(
    record: DrillRecord, app: RunningApp, client: AppClient, path: str, *, within: float
) -> bool:
    """GET `path` until it answers 200 or `within` seconds pass; True when it did."""
    name = f"GET {path} answers 200"
    answers = Answers()
    while True:
        trouble = _trouble(app)
        if trouble is not None:
            what, container = trouble
            detail = f"{what} {answers.elapsed:.1f} s into the wait for {path}"
            _fail(record, name, f"{detail}{_told(answers)}; its last output:\n", app, container)
            return False
        response, error = _get(client, app, path)
        answers.add(outcome_of(response, error))
        if response is not None and response.status_code == 200:
            if len(answers.seen) == 1:
                record.check(name, True, f"200 in {answers.elapsed:.3f} s", app.display)
            else:
                detail = f"200 after {answers.elapsed:.1f} s: {answers.story()}"
                record.check(name, True, detail, app.display)
            return True
        if response is not None and response.status_code in (401, 403):
            record.check(name, False, _refused(path, response, client), app.display)
            return False
        if answers.elapsed >= within:
            last = (
                f"GET {path} answered {response.status_code}: {reason(response)}"
                if response is not None
                else f"GET {path}: no answer: {request_error(error)}"
            )
            detail = f"{last} (still, after {within:.0f} s: {answers.story()})"
            record.check(name, False, detail, app.display)
            return False
        time.sleep(POLL_INTERVAL)


def check_holds(
    record: DrillRecord, app: RunningApp, client: AppClient, path: str, *, soak: float
) -> bool:
    """After its first healthy answer the app stays healthy for `soak` seconds: every
    poll answers 200 and no container exits, restarts or turns unhealthy."""
    name = f"the application stays healthy for {soak:.0f} s"
    before = {state.name: state for state in app.states()}
    answers = Answers()
    while True:
        trouble = _trouble(app, before)
        if trouble is not None:
            return _broke(record, name, trouble, answers, app)
        response, error = _get(client, app, path)
        answers.add(outcome_of(response, error))
        if response is None or response.status_code != 200:
            # A process that dies drops its connections before Docker reports it exited:
            # the container's own state, once it settles, is the cause to name.
            trouble = _settled_trouble(app, before)
            if trouble is not None:
                return _broke(record, name, trouble, answers, app)
            said = (
                f"answered {response.status_code} ({reason(response)})"
                if response is not None
                else f"got no answer ({request_error(error)})"
            )
            detail = (
                f"GET {path} {said} {answers.elapsed:.1f} s into the watch: {answers.story()}; "
                "its last output:\n"
            )
            _fail(record, name, detail, app, app.display)
            return False
        if answers.elapsed >= soak:
            count = len(before)
            detail = (
                f"healthy for {answers.elapsed:.1f} s: {answers.story()}; {count} "
                f"container{'s' if count != 1 else ''} up, none exited or restarted"
            )
            record.check(name, True, detail, app.display)
            return True
        time.sleep(POLL_INTERVAL)


def is_running(app: RunningApp) -> bool:
    """Whether every container of the app is up (none exited, restarting or unhealthy)."""
    return _trouble(app) is None


def check_still_up(record: DrillRecord, app: RunningApp) -> Check:
    """Every container of the app is still up after the last check."""
    name = "the application is still up after the checks"
    for state in app.states():
        problem = state.trouble()
        if problem is not None:
            return _fail(record, name, f"{problem}; its last output:\n", app, state.name)
    return record.check(name, True, "every container running", app.display)


def check_count(
    record: DrillRecord, app: RunningApp, client: AppClient, path: str, expected: int, what: str
) -> Check:
    """GET a count path answering {"count": N} (or N): N must equal `expected`, the count
    `what` gave in the restored database."""
    name = "the count through the API equals the database's"
    response = _answer(record, name, app, client, path, 200)
    if isinstance(response, Check):
        return response
    try:
        body = response.json()
        count = body["count"] if isinstance(body, dict) else body
    except (ValueError, KeyError):
        detail = f'GET {path}: expected {{"count": N}} or N, got {body_start(response)}'
        return record.check(name, False, detail, app.display)
    if isinstance(count, bool) or not isinstance(count, int):
        return record.check(name, False, f"GET {path}: not an integer: {count!r}", app.display)
    detail = f"API {count}, database {expected} (GET {path}; {what})"
    return record.check(name, count == expected, detail, app.display)


def check_upload(
    record: DrillRecord,
    app: RunningApp,
    client: AppClient,
    path: str,
    sha256: str,
    size: int | None = None,
) -> Check:
    """GET one restored upload through the API: its bytes must hash to `sha256`."""
    name = "a restored upload is served byte-identical"
    try:
        with client.get(app.url(path), stream=True) as response:
            if response.status_code != 200:
                detail = f"GET {path_of(path)} answered {response.status_code}: {reason(response)}"
                return record.check(name, False, detail, app.display)
            digest, served = hashlib.sha256(), 0
            for block in response.iter_content(CHUNK):
                digest.update(block)
                served += len(block)
    except requests.RequestException as exc:
        return record.check(name, False, f"GET {path_of(path)}: {request_error(exc)}", app.display)
    if digest.hexdigest() != sha256.lower():
        detail = (
            f"GET {path_of(path)}: {served} bytes, sha256 {digest.hexdigest()[:16]}…, "
            f"expected {sha256[:16]}…" + (f" ({size} bytes)" if size is not None else "")
        )
        return record.check(name, False, detail, app.display)
    detail = f"GET {path_of(path)}: {served} bytes, sha256 {sha256[:16]}… equal"
    return record.check(name, True, detail, app.display)


def check_smoke(
    record: DrillRecord,
    app: RunningApp,
    client: AppClient,
    path: str,
    status: int = 200,
    contains: str | None = None,
) -> Check:
    """GET `path`: it must answer `status`, its body holding `contains` when given."""
    name = f"GET {path} answers {status}" + (f" with {contains!r}" if contains else "")
    response = _answer(record, name, app, client, path, status)
    if isinstance(response, Check):
        return response
    if contains is not None and contains not in response.text:
        detail = f"GET {path} answered {status} without {contains!r}: {body_start(response)}"
        return record.check(name, False, detail, app.display)
    held = f", holding {contains!r}" if contains else ""
    return record.check(name, True, f"{status}{held} ({len(response.content)} bytes)", app.display)


def _answer(
    record: DrillRecord, name: str, app: RunningApp, client: AppClient, path: str, status: int
) -> requests.Response | Check:
    """The answer to GET `path` when its status is `status`, else the failed check."""
    try:
        response = client.get(app.url(path))
    except requests.RequestException as exc:
        detail = f"GET {path}: no answer: {request_error(exc)}"
        return record.check(name, False, detail, app.display)
    if response.status_code != status:
        detail = f"GET {path} answered {response.status_code}: {reason(response)}"
        return record.check(name, False, detail, app.display)
    return response


def _get(client: AppClient, app: RunningApp, path: str):
    try:
        return client.get(app.url(path), timeout=10), None
    except requests.RequestException as exc:
        return None, exc


def _trouble(app: RunningApp, before: dict | None = None) -> tuple[str, str] | None:
    """(what is wrong, with which container) for the first container in trouble."""
    for state in app.states():
        problem = state.trouble((before or {}).get(state.name))
        if problem is not None:
            return problem, state.name
    return None


def _settled_trouble(app: RunningApp, before: dict, wait: float = 2.0) -> tuple[str, str] | None:
    deadline = time.monotonic() + wait
    while True:
        trouble = _trouble(app, before)
        if trouble is not None or time.monotonic() >= deadline:
            return trouble
        time.sleep(0.2)


def _broke(
    record: DrillRecord, name: str, trouble: tuple[str, str], answers: Answers, app: RunningApp
) -> bool:
    what, container = trouble
    detail = f"{what} {answers.elapsed:.1f} s into the watch{_told(answers)}"
    _fail(record, name, detail + "; its last output:\n", app, container)
    return False


def _told(answers: Answers) -> str:
    return f" (answers until then: {answers.story()})" if answers.seen else ""


def _fail(record: DrillRecord, name: str, detail: str, app: RunningApp, container: str) -> Check:
    """A failed check about a container, with the end of its logs in the evidence."""
    return record.check(name, False, detail + app.logs_of(container, LOG_LINES), container)


def _refused(path: str, response: requests.Response, client: AppClient) -> str:
    code = response.status_code
    if not client.sends_headers:
        return (
            f"GET {path} answered {code}: the health path wants a credential the drill did "
            "not send; set [app] headers to the header it expects, its value in an "
            'environment variable, e.g. headers = { "X-Health-Token" = "HEALTH_TOKEN" }'
        )
    return (
        f"GET {path} answered {code} with {client.described}: the credential was refused "
        "(a wrong or expired value in that variable?)"
    )
