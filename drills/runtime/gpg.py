"""gpg for backups: a private GnuPG home with its agent started up front, and gpg as a pipe
(`gpg_pipe`) that decrypts or encrypts a stream, its failures named.

gpg 2 does symmetric encryption through gpg-agent, which it starts on first use with a short
wait of its own; on a busy machine that autostart can give up ("No agent running"). Starting
the agent explicitly, with our own bound, makes the outcome depend on the archive and the
passphrase only. The home holds no keyrings and is removed, agent and all, afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from drills.config.errors import DrillError, EnvironmentProblem, IntegrityError

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


CIPHER = "AES256"
MAX_PASSPHRASE = 4096  # written to a pipe before gpg starts: it must fit the pipe's buffer


class Passphrase:
    """A secret that never shows in a repr, a traceback's locals or a log."""

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Passphrase(***)"

    def encoded(self) -> bytes:
        """The bytes gpg reads from its passphrase pipe."""
        return self._value.encode()

    @classmethod
    def from_env(cls, env_name: str | None, key: str, setting: str) -> Passphrase:
        """The passphrase in the variable `env_name` names; each way it can be missing is
        named (`setting` is the drill.toml key, e.g. "[database] passphrase_env")."""
        if not env_name:
            raise DecryptError(
                f"{key} is encrypted, but {setting} is not set: name the environment variable "
                "that holds its passphrase"
            )
        if env_name not in os.environ:
            raise DecryptError(
                f"{key} is encrypted, but the passphrase variable {env_name} is not set in the "
                "drill's environment"
            )
        secret = cls(os.environ[env_name])
        if not secret.encoded():
            raise DecryptError(f"{key} is encrypted, but {env_name} is empty")
        if len(secret.encoded()) >= MAX_PASSPHRASE:
            raise DecryptError(f"the passphrase in {env_name} is too long for gpg's pipe")
        return secret


class DecryptError(DrillError):
    """A backup cannot be decrypted: no passphrase, the wrong one, the wrong key."""


@dataclass
class GpgPipe:
    """A running gpg that reads stdin and writes stdout; its stderr kept to name a failure."""

    proc: subprocess.Popen
    stderr: BinaryIO

    def error(self, key: str) -> DrillError:
        """gpg's failure as a named cause: a wrong secret, the wrong key, not gpg data, a
        damaged or truncated ciphertext."""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit {self.proc.returncode}"
        low = text.lower()
        if "bad session key" in low or "bad passphrase" in low:
            return DecryptError(f"{key}: gpg could not decrypt it: wrong passphrase ({last})")
        if "no secret key" in low:
            return DecryptError(
                f"{key}: gpg could not decrypt it: not encrypted for a key in the keyring ({last})"
            )
        if "no valid openpgp data" in low:
            return IntegrityError(
                f"{key}: not gpg-encrypted, though its name or manifest says it is ({last})"
            )
        return IntegrityError(
            f"{key}: gpg failed (exit {self.proc.returncode}): {last}; the ciphertext is damaged "
            "or truncated"
        )


@contextlib.contextmanager
def gpg_pipe(
    action: str,
    *,
    passphrase: Passphrase | None = None,
    keyring: str | os.PathLike[str] | None = None,
    recipient: str | None = None,
    hide: str | None = None,
    stdin: BinaryIO | int | None = None,
) -> Iterator[GpgPipe]:
    """gpg decrypting (`action` "decrypt") or encrypting ("encrypt": AES256 with the
    passphrase, or to `recipient` in `keyring`) stdin to stdout.

    Without a `keyring` gpg runs in a private, temporary home; the passphrase reaches it
    through a pipe, never a command line or a file; `hide` names an environment variable gpg
    must not see (the one holding the passphrase). `stdin` is an open pipe to read instead of
    a new one (the output of the process before gpg).
    """
    if shutil.which("gpg") is None:
        raise EnvironmentProblem("gpg: not found on PATH; install it (Debian: gnupg)")
    with contextlib.ExitStack() as stack:
        home = Path(keyring) if keyring else stack.enter_context(private_home())
        stderr = stack.enter_context(tempfile.TemporaryFile())
        argv = ["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty", "--quiet"]
        fds: tuple[int, ...] = ()
        read_fd = None
        if passphrase is not None:
            read_fd, write_fd = os.pipe()
            try:
                os.write(write_fd, passphrase.encoded() + b"\n")
            finally:
                os.close(write_fd)
            argv += ["--pinentry-mode", "loopback", "--passphrase-fd", str(read_fd)]
            argv += ["--no-symkey-cache"]
            fds = (read_fd,)
        if action == "decrypt":
            argv += ["--decrypt"]
        elif recipient:
            argv += ["--trust-model", "always", "--encrypt", "--recipient", recipient]
        else:
            argv += ["--symmetric", "--cipher-algo", CIPHER]
        argv += ["--output", "-"]
        env = {k: v for k, v in os.environ.items() if k != hide}
        env["GNUPGHOME"] = str(home)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is None else stdin,
                stdout=subprocess.PIPE,
                stderr=stderr,
                pass_fds=fds,
                env=env,
            )
        finally:
            if read_fd is not None:
                os.close(read_fd)
        try:
            yield GpgPipe(proc, stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        pipe.close()


@dataclass(frozen=True)
class Encryption:
    """How a producer encrypts: with the passphrase in the variable `passphrase_env` names
    (AES256, as the original runbook's `gpg --symmetric --cipher-algo AES256`), or to
    `recipient`'s public key in the keyring `gpg_home`."""

    passphrase_env: str | None = None
    gpg_home: str | None = None
    recipient: str | None = None

    def pipe(self, stdin: BinaryIO | int | None = None):
        """`gpg_pipe` encrypting, as this encryption says (a context manager)."""
        passphrase = None
        if not self.recipient:
            passphrase = Passphrase.from_env(
                self.passphrase_env, "the new backup", "[database] passphrase_env"
            )
        return gpg_pipe(
            "encrypt",
            passphrase=passphrase,
            keyring=self.gpg_home if self.recipient else None,
            recipient=self.recipient,
            hide=self.passphrase_env,
            stdin=stdin,
        )
