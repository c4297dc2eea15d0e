"""A private GnuPG home for one encryption or decryption, with its agent started up front.

gpg 2 does symmetric encryption through gpg-agent, which it starts on first use with a short
wait of its own; on a busy machine that autostart can give up ("No agent running"). Starting
the agent explicitly, with our own bound, makes the outcome depend on the archive and the
passphrase only. The home holds no keyrings and is removed, agent and all, afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from drills.config.errors import EnvironmentProblem

AGENT_START_TIMEOUT_S = 60
MAX_TMP_LEN = 60


@contextlib.contextmanager
def private_home() -> Iterator[Path]:
    """A fresh GNUPGHOME with a running gpg-agent; both gone when the block ends."""
    home = Path(tempfile.mkdtemp(prefix="drill-gnupg-", dir=_short_tmp()))
    home.chmod(0o700)
    try:
        _launch_agent(home)
        yield home
    finally:
        if shutil.which("gpgconf"):
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"],
                capture_output=True,
                check=False,
                timeout=30,
            )
        shutil.rmtree(home, ignore_errors=True)


def _short_tmp() -> str:
    """A temporary directory short enough for the agent's sockets.

    The agent's socket paths live in the home ("<home>/S.gpg-agent.browser"), and a Unix
    socket path cannot pass 107 bytes: under a long TMPDIR the agent cannot start at all.
    """
    base = tempfile.gettempdir()
    return base if len(base) <= MAX_TMP_LEN else "/tmp"


def _launch_agent(home: Path) -> None:
    if shutil.which("gpgconf") is None:
        return  # gpg 1 has no agent to start; gpg itself reports what is missing
    try:
        result = subprocess.run(
            ["gpgconf", "--homedir", str(home), "--launch", "gpg-agent"],
            capture_output=True,
            timeout=AGENT_START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"gpg-agent did not start within its bound of {AGENT_START_TIMEOUT_S} s"
        ) from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise EnvironmentProblem(f"gpg-agent could not be started: {detail}")
