"""HTTP channels: a Slack-compatible webhook message and the dead-man's-switch ping.

Slack's incoming webhooks take `{"text": ...}`; so do Mattermost's, Rocket.Chat's and the
Slack-compatible endpoints of others. The URLs hold tokens: they are named in messages by
their host only (`hide_url_path`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from drills.config.schema import hide_url_path
from drills.notify.message import Message

USER_AGENT = "recovery-drills"


class ChannelError(Exception):
    """A channel could not deliver; the message names the channel's target and the cause."""


def post_message(url: str, message: Message, timeout: float) -> str:
    """POST `message` as Slack-compatible JSON to `url`; return what the server answered."""
    icon = ":white_check_mark:" if message.passed else ":rotating_light:"
    first, _, rest = message.text.partition("\n")
    body = {"text": f"{icon} *{first}*\n{rest}".rstrip()}
    return request(url, timeout, data=json.dumps(body).encode(), kind="application/json")


def ping(url: str, timeout: float) -> str:
    """GET the dead-man's-switch URL; return what the server answered."""
    return request(url, timeout)


def request(
    url: str,
    timeout: float,
    *,
    data: bytes | None = None,
    kind: str | None = None,
    method: str | None = None,
) -> str:
    """One HTTP request bounded by `timeout` per socket operation; 'HTTP 200' or ChannelError."""
    headers = {"User-Agent": USER_AGENT} | ({"Content-Type": kind} if kind else {})
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            answer.read(65536)
            return f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"{hide_url_path(url)}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ChannelError(f"{hide_url_path(url)}: {_reason(exc.reason)}") from None
    except TimeoutError:
        raise ChannelError(f"{hide_url_path(url)}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise ChannelError(f"{hide_url_path(url)}: {_reason(exc)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no answer in time"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
