"""Progress on the terminal: a `drill run` of a real dump under a real pseudo-terminal shows
the phase, the bytes read of the dump's size, the rate and the ETA on one rewritten line, and
clears it; the same run into pipes, with DRILL_PROGRESS=0 or with --no-progress, shows none
of it. A files drill and a real recovery (`drill restore database`) show theirs too, the
recovery's messages each on a line of its own. A download counts every byte, from a local
directory and from S3's ranged GETs. The line's parts (bytes, rate, ETA) are checked without
Docker."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import select
import struct
import subprocess
import termios
import time
from datetime import timedelta

import pytest

from drills.restore import progress
from drills.restore.fetch import PART, Part, download
from fixtures.estate_backups import put_files_snapshot, write_drill_toml
from tests.test_drill_database import DB, DRILL, ROOT, _stamp, one_backup_store

# The bulk database's dump: 45 MB of SQL, long enough to be watched for a few seconds.
CHECK = "SELECT count(*) = 500000 FROM events"
BYTES_OF_TOTAL = re.compile(r"(\d+(?:\.\d+)? [kMG]?B) / (\d+(?:\.\d+)? [kMG]?B)  (\d+)%")
RATE = re.compile(r"\d+(?:\.\d+)? [kMG]?B/s")
TEST_NAME = "test_latest_database_backup_restores "
ETA = re.compile(r"ETA (\d+(?:\.\d+)? s|\d+m \d\ds)")


def _in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a new pseudo-terminal; return its exit code
    and everything it wrote to the terminal."""
    controller, terminal = _openpty()
    proc = subprocess.Popen(
        argv, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, env=env
    )
    os.close(terminal)
    seen = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        code = proc.wait(timeout=600)
    return code, seen.decode(errors="replace")


def _openpty(rows: int = 40, columns: int = 160) -> tuple[int, int]:
    """A pseudo-terminal of a given size (a new one has none): its controller and terminal."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # A terminal's usual output settings: "\n" becomes "\r\n", "\r" stays "\r".
    attrs = termios.tcgetattr(terminal)
    attrs[1] = termios.OPOST | termios.ONLCR
    termios.tcsetattr(terminal, termios.TCSANOW, attrs)
    return controller, terminal


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != progress.ENV}
    return {**env, **changes}


def _drain(fd: int) -> bytes:
    """What is waiting to be read on `fd`."""
    seen = bytearray()
    while select.select([fd], [], [], 0.2)[0]:
        seen += os.read(fd, 65536)
    return bytes(seen)


def _bulk_store(tmp_path, dumps):
    name = f"{DB}_{_stamp(timedelta(minutes=2))}.sql"
    return one_backup_store(tmp_path, name, dumps["large"], check=CHECK), len(dumps["large"])


def _during_test(output: str) -> str:
    """What the terminal showed between pytest's name of the drill's test and its verdict."""
    start = output.index(TEST_NAME) + len(TEST_NAME)
    return output[start : output.index("PASSED", start)]


def _lines(output: str) -> list[str]:
    """What the terminal showed, one entry per rewrite of a line."""
    return [part for part in re.split(r"[\r\n]", output) if part.strip()]


def test_a_restore_on_a_terminal_shows_bytes_of_the_total_rate_eta_and_phase(
    tmp_path, dump_variants
):
    config, size = _bulk_store(tmp_path, dump_variants)
    code, output = _in_pty([*DRILL, "run", "--config", str(config)], _env())
    assert code == 0, output
    drawn = [line for line in _lines(output) if BYTES_OF_TOTAL.search(line)]
    assert drawn, f"no progress line with bytes of the total in:\n{output}"
    # The total is the dump's size as the storage lists it.
    totals = {BYTES_OF_TOTAL.search(line).group(2) for line in drawn}
    assert totals == {progress.format_bytes(size)}
    assert any(line.startswith("restore  database/") for line in drawn), drawn
    assert any(RATE.search(line) for line in drawn), drawn
    assert any(ETA.search(line) for line in drawn), drawn
    # Phases without a byte count show their name and the time spent in them.
    assert re.search(r"(provision|verify|locate)  \d+\.\d s", output), output
    # One line below the test's name, rewritten, then cleared; the cursor goes back to the
    # end of the test's name, where pytest writes the verdict.
    during = _during_test(output)
    assert during.count("\n") == 1, during
    name = output.index(TEST_NAME) + len(TEST_NAME)
    column = name - output.rindex("\n", 0, name) - 1
    assert f"\r\x1b[K\x1b[A\x1b[{column}C" in during, during
    assert "drill: PASS" in output


def test_no_progress_into_pipes(tmp_path, dump_variants):
    config, _ = _bulk_store(tmp_path, dump_variants)
    done = subprocess.run(
        [*DRILL, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=_env(),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "PASSED" in output
    assert "\r" not in output
    assert "\x1b[" not in output
    assert not ETA.search(output)
    assert not BYTES_OF_TOTAL.search(output)


@pytest.mark.parametrize(
    ("option", "env"),
    [([], {progress.ENV: "0"}), (["--no-progress"], {})],
    ids=["DRILL_PROGRESS=0", "--no-progress"],
)
def test_no_progress_on_a_terminal_when_turned_off(tmp_path, dump_variants, option, env):
    config, _ = _bulk_store(tmp_path, dump_variants)
    code, output = _in_pty([*DRILL, "run", "--config", str(config), *option], _env(**env))
    assert code == 0, output
    during = _during_test(output)
    assert "\r" not in during, during
    assert "\n" not in during, during
    assert not ETA.search(output)
    assert not BYTES_OF_TOTAL.search(output)


def test_a_files_restore_on_a_terminal_shows_bytes_of_the_total(tmp_path, local_storage):
    # Uploads large enough to be streamed (not prefetched whole) and watched for a while.
    rng = random.Random(5)
    files = {f"documents/scan {i:02d}.pdf": rng.randbytes(12_000_000) for i in range(6)}
    put_files_snapshot(local_storage, files)
    config = write_drill_toml(tmp_path, local_storage.url, "[files]\n")
    code, output = _in_pty([*DRILL, "run", "--config", str(config), "--only", "files"], _env())
    assert code == 0, output
    drawn = [line for line in _lines(output) if BYTES_OF_TOTAL.search(line)]
    assert drawn, f"no progress line with bytes of the total in:\n{output}"
    assert {BYTES_OF_TOTAL.search(line).group(2) for line in drawn} == {"72.0 MB"}
    assert any(line.startswith("restore  files/") for line in drawn), drawn


def test_a_recovery_on_a_terminal_shows_progress_below_its_messages(
    tmp_path, local_storage, dump_variants, run_session, postgres_image
):
    from drills.runtime.postgres import start_postgres

    name = f"database/{DB}_{_stamp(timedelta(minutes=2))}.sql"
    local_storage.put_bytes(name, dump_variants["large"])
    config = write_drill_toml(
        tmp_path, local_storage.url, f'[database]\nname = "{DB}"\nchecks = ["{CHECK}"]\n'
    )
    server = start_postgres(postgres_image, run_session)
    try:
        code, output = _in_pty(
            [
                *DRILL, "restore", "database", "--config", str(config), "--yes",
                "--no-safety-dump", "--to", f"postgresql://{server.user}@127.0.0.1:{server.port}/{DB}",
            ],
            _env(PGPASSWORD=server.password),
        )  # fmt: skip
    finally:
        server.stop()
    assert code == 0, output
    drawn = [line for line in _lines(output) if BYTES_OF_TOTAL.search(line)]
    assert drawn, f"no progress line with bytes of the total in:\n{output}"
    if len(drawn) > 1:  # a dump read in one tick of the display shows one line, rate or not
        assert any(RATE.search(line) for line in drawn), drawn
    # Every message of the recovery starts on a line of its own: the progress line was cleared
    # before it, never left in front of it.
    starts = [m.start() for m in re.finditer("(?<! )restore: ", output)]  # not the plan's
    assert len(starts) >= 3, output
    for at in starts:
        assert output[:at].endswith(("\n", "\r\x1b[K")), repr(output[at - 80 : at + 40])
    assert "\x1b[K" in output.rsplit("restore: ", 1)[0]


def test_a_download_counts_every_byte_from_either_storage(backup_storage, tmp_path):
    # From S3, a dump past two parts is fetched in parallel ranged GETs, each counted.
    data = random.Random(3).randbytes(2 * PART + 1_234_567)
    backup_storage.put_bytes("database/app.dump", data)
    part = Part("app.dump", "database/app.dump", len(data), hashlib.sha256(data).hexdigest())
    with progress.measuring(part.key, part.size) as meter:
        download(backup_storage, part, tmp_path / "app.dump")
        assert meter.done == len(data)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1_536, "1.5 kB"),
        (120_500_000, "120.5 MB"),
        (1_390_000_000, "1.39 GB"),
        (25_000_000_000, "25.0 GB"),
        (3_200_000_000_000, "3.20 TB"),
    ],
)
def test_bytes_read_as_people_read_them(n, text):
    assert progress.format_bytes(n) == text


def test_rate_and_eta_read_as_people_read_them():
    assert progress.format_rate(None) == "-- B/s"
    assert progress.format_rate(35_200_000) == "35.2 MB/s"
    assert progress.format_eta(None) == "ETA --"
    assert progress.format_eta(4.94) == "ETA 4.9 s"
    assert progress.format_eta(185) == "ETA 3m 05s"
    assert progress.format_eta(3720) == "ETA 1h 02m"


def test_rate_is_measured_over_a_window_and_eta_follows_from_it():
    rate = progress.Rate(window_s=5)
    assert rate.sample(0.0, 0) is None  # nothing to measure yet
    assert rate.sample(1.0, 10_000_000) == pytest.approx(10_000_000)
    for second in range(2, 12):
        measured = rate.sample(float(second), 10_000_000 + (second - 1) * 2_000_000)
    assert measured == pytest.approx(2_000_000)  # the early burst has left the window
    assert progress.eta(40_000_000, 100_000_000, 2_000_000) == pytest.approx(30)
    assert progress.eta(40_000_000, None, 2_000_000) is None
    assert progress.eta(40_000_000, 100_000_000, None) is None


def test_the_line_names_the_phase_and_what_the_restore_is_at():
    with progress.measuring("database/app.sql.gz", 292_000_000) as meter:
        progress.counter().done += 120_500_000
        text = progress.line("restore", meter, 35_200_000, meter.started + 3)
        assert text == (
            "restore  database/app.sql.gz  120.5 MB / 292.0 MB  41%  35.2 MB/s  ETA 4.9 s"
        )
        progress.step("indexes and constraints")
        text = progress.line("restore", meter, None, meter.stage_since + 12.34)
        assert text == "restore  indexes and constraints  12.3 s"
    assert progress.current() is None
    assert progress.line("validate", None, None, 0.0) == "validate"


def test_display_rewrites_one_line_at_most_four_times_a_second_and_clears_it():
    controller, terminal = _openpty()
    try:
        display = progress.Display(terminal, lambda: ("restore", 1.0))
        with progress.measuring("dump.sql", 1000):
            count = progress.counter()
            display.start()
            for _ in range(20):  # a second of reading
                count.done += 10
                time.sleep(0.05)
            display.stop()
        seen = _drain(controller).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert 1 <= display.drawn <= 5  # one second of work, four updates a second at most
    assert "restore  dump.sql" in seen
    assert "\n" not in seen  # one line, rewritten
    assert seen.endswith("\r\x1b[K")
