""".env-style files: KEY=VALUE lines as docker compose and the usual dotenv loaders read them.

Accepted: comments and blank lines, an optional `export`, unquoted values (a ` #` starts a
comment), single-quoted values taken literally, double-quoted values with `\\n`, `\\t`, `\\"`
and `\\\\` escapes; quoted values may span lines. A syntax error names the file and the line,
never the line's content (it may hold a secret).

    >>> parse_env(b'export A=1\\nB="two words" # note\\n', ".env")
    {'A': '1', 'B': 'two words'}
"""

from __future__ import annotations

import re

from drills.config.errors import DrillError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class EnvSyntaxError(DrillError):
    """A .env-style file does not parse; the message gives the line, never its content."""


def parse_env(data: bytes, name: str) -> dict[str, str]:
    """The variables a .env-style file sets, in order (a later line wins).

    Raises EnvSyntaxError naming the file and the line.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvSyntaxError(f"{name}: not UTF-8 text (at byte {exc.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export") and line[6:7] in (" ", "\t"):
            line = line[6:].lstrip()
        key, sep, value = line.partition("=")
        key = key.rstrip()
        if not sep or not _KEY.fullmatch(key):
            raise EnvSyntaxError(f"{name}: line {number}: expected KEY=VALUE")
        value = value.lstrip()
        if value[:1] not in ('"', "'"):
            found[key] = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
            continue
        quote, body = value[0], value[1:]
        end = _closing(body, quote)
        while end < 0:
            if i >= len(lines):
                raise EnvSyntaxError(
                    f"{name}: line {number}: {key}: the {quote} quote is never closed"
                )
            body += "\n" + lines[i]
            i += 1
            end = _closing(body, quote)
        rest = body[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise EnvSyntaxError(
                f"{name}: line {number}: {key}: unexpected text after the closing quote"
            )
        found[key] = _unescape(body[:end]) if quote == '"' else body[:end]
    return found


def _closing(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if body[i] == "\\" and quote == '"':
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], "\\" + m[1]), body, flags=re.S)
