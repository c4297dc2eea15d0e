"""The fault catalogue: every fault we can name, how it is made for real, and what it must cause.

One row per fault. Each is made on real backups (bytes flipped, files cut, objects deleted,
containers killed), never by patching the harness. A row names the drill that must fail (or,
for a transient fault, pass) and the words its cause must contain. `tests/faults/
test_catalogue.py` runs every row through `drill run` and prints the table; docs/reliability.md
carries it as the product's promise.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from drills.backup import Destination, backup_files
from drills.pitr import iso
from drills.runtime import images
from drills.runtime.estate import write_config_files
from drills.storage.manifest import DirEntry, FileEntry, LinkEntry, Manifest, TableCount
from fixtures.apps import build_accounts_image
from fixtures.estate_backups import (
    DB,
    drill_cli,
    gpg_symmetric,
    put_config_archive,
    put_files_snapshot,
    run_drill,
    stamp,
    typed_uploads,
    write_drill_toml,
)
from fixtures.upload_trees import (
    config_tree,
    runbook_config_archive,
    runbook_mirror,
    runbook_snapshot,
)

ENV_FILE = b"DATABASE_URL=postgresql://app:pw@db/app\nSECRET_KEY=not-a-real-secret\n"
COMPOSE = b"services:\n  api:\n    image: app\n"
PASSPHRASE = "correct horse battery staple"
UPLOADS = {
    "avatars/a.png": b"\x89PNG" + os.urandom(2000),
    "documents/b.pdf": b"%PDF" + os.urandom(3000),
    "receipts/c.jpg": b"\xff\xd8" + os.urandom(1500),
}

DATABASE = f'[database]\nname = "{DB}"\nchecks = ["SELECT count(*) > 0 FROM users"]\n'
FILES = "[files]\n"
CONFIG = (
    '[config]\npassphrase_env = "DRILL_CONFIG_PASSPHRASE"\n'
    'required = [".env.production", "docker-compose.yml"]\n'
)
APP = "[app]\n"


@dataclass
class Case:
    """What a row set up: config sections, the environment, and an action during the run."""

    sections: str
    env: dict[str, str] = field(default_factory=dict)
    during: Callable[[int], None] | None = None  # called with the drill process's pid
    storage_url: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True)
class Fault:
    """One row of the catalogue."""

    name: str
    area: str
    injection: str
    drill: str
    words: str
    make: Callable  # (ctx) -> Case
    expect: str = "fail"
    exit: int = 1
    absent: str = ""  # words the cause must not contain (a consequence blamed as the root)


# -- database dumps ---------------------------------------------------------------------------


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


def _put_dump(
    ctx,
    data: bytes,
    *,
    manifest: Manifest | None = None,
    ext: str = ".sql.gz",
    age: timedelta = timedelta(minutes=3),
) -> str:
    key = f"database/{DB}_{stamp(age)}{ext}"
    ctx.storage.put_bytes(key, data)
    if manifest is not None:
        ctx.storage.put_bytes(f"{key}.manifest.json", manifest.to_json().encode())
    return key


def _manifest(data: bytes, counts: dict[str, int], **changes) -> Manifest:
    taken = datetime.now(UTC) - timedelta(minutes=3)
    fields = {
        "kind": "database",
        "started_at": taken,
        "finished_at": taken,
        "format": "plain",
        "compression": "gzip",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "database": DB,
        "server_version": "15",
        "tables": tuple(TableCount(f"public.{t}", n, True) for t, n in counts.items()),
    }
    fields.update(changes)
    return Manifest(**fields)


def dump_case(transform: Callable[[dict], bytes], ext: str = ".sql.gz"):
    """A row's maker: store `transform(dumps)` as the newest dump, drill the database."""

    def make(ctx) -> Case:
        _put_dump(ctx, transform(ctx.dumps), ext=ext)
        return Case(DATABASE)

    return make


def manifest_case(**lie):
    """A clean dump whose manifest lies in one way."""

    def make(ctx) -> Case:
        data = _gz(ctx.dumps["plain"])
        counts = dict(ctx.dumps["counts"])
        changes = {}
        if "sha256" in lie:
            changes["sha256"] = lie["sha256"]
        if "extra_table" in lie:
            counts[lie["extra_table"]] = 10
        if "users" in lie:
            counts["users"] = lie["users"]
        if "extra_index" in lie:
            changes["extra"] = {"inventory": {"index": [lie["extra_index"]]}}
        _put_dump(ctx, data, manifest=_manifest(data, counts, **changes))
        return Case(DATABASE)

    return make


def _flip(data: bytes, at: float) -> bytes:
    out = bytearray(data)
    out[int(len(out) * at)] ^= 0xFF
    return bytes(out)


def _cut(fraction: float):
    return lambda d: _gz(d["plain"])[: int(len(_gz(d["plain"])) * fraction)]


def _with_sql(sql: bytes, extra: bytes, where: str = "middle") -> bytes:
    lines = sql.split(b"\n")
    if where == "end":
        return sql + b"\n" + extra + b"\n"
    middle = len(lines) // 2
    while not lines[middle].startswith(b"CREATE") and middle < len(lines) - 1:
        middle += 1
    return b"\n".join([*lines[:middle], extra, *lines[middle:]])


def _damaged_toc(d: dict) -> bytes:
    data = bytearray(d["custom"])
    data[200:400] = os.urandom(200)
    return bytes(data)


def _statement_end(sql: bytes, marker: bytes) -> int:
    """The end of the first statement after the header line holding `marker`."""
    at = sql.index(marker)
    return sql.index(b";\n", sql.index(b"\n\n", at) + 2) + 2


def _cut_after(marker: bytes):
    """A plain dump cut at the statement boundary after the header `marker`, then gzipped
    whole: what `pg_dump > f; gzip f` leaves when pg_dump dies there."""
    return lambda d: _gz(d["plain"][: _statement_end(d["plain"], marker)])


def _cut_in_copy(table: bytes, rows: int):
    """A plain dump cut after `rows` whole rows of a table's COPY data."""

    def cut(d: dict) -> bytes:
        sql = d["plain"]
        at = sql.index(b"\n", sql.index(b"COPY " + table)) + 1
        for _ in range(rows):
            at = sql.index(b"\n", at) + 1
        return _gz(sql[:at])

    return cut


def _after_data(d: dict) -> bytes:
    """A plain dump cut after its last table's data: every row there, no post-data."""
    sql = d["plain"]
    end = sql.index(b"\n\\.\n", sql.rindex(b"Type: TABLE DATA;")) + 4
    return _gz(sql[:end])


def _stripped_post_data(d: dict) -> bytes:
    """A dump whose index and foreign-key statements a filter removed (headers kept): a
    restore of it succeeds and lacks what the dump declares."""
    sql = d["plain"]
    for marker in (b"Type: INDEX;", b"Type: FK CONSTRAINT;"):
        at = sql.index(marker)
        start = sql.index(b"\n\n", at) + 2
        sql = sql[:start] + sql[_statement_end(sql, marker) :]
    return _gz(sql)


def _directory_without(table: str):
    """A directory-format dump (no manifest) with one table's data file deleted."""

    def make(ctx) -> Case:
        files = dict(ctx.dumps["directory"])
        del files[ctx.dumps["directory_data"][table]]
        prefix = f"database/{DB}_{stamp(timedelta(minutes=3))}.dir/"
        for name, data in files.items():
            ctx.storage.put_bytes(prefix + name, data)
        return Case(DATABASE)

    return make


def wiped_after_history(ctx) -> Case:
    """A good dump is drilled (the history), then retention removes it and a dump taken
    after 99% of the rows were deleted becomes the newest."""
    good = _put_dump(ctx, _gz(ctx.dumps["plain"]), age=timedelta(minutes=50))
    ctx.drill_now(DATABASE)
    ctx.storage_delete(good)
    _put_dump(ctx, _gz(ctx.dumps["wiped"]))
    return Case(DATABASE)


def a_tenth_of_the_size(ctx) -> Case:
    """No manifests, no history: a dump a tenth the size of the one before it."""
    _put_dump(ctx, _gz(ctx.dumps["plain"]), age=timedelta(minutes=50))
    _put_dump(ctx, _gz(ctx.dumps["wiped"]))
    return Case(DATABASE)


def _large_failing(ctx) -> Case:
    """A 20+ MB dump with a true manifest whose restore fails at once for a reason of its
    own: psql's error is the cause, not the bytes psql never read."""
    sql = ctx.dumps["large"]
    first = sql.index(b"\n--\n-- Name: ")
    data = _gz(sql[:first] + b"\nSELECT 1/0;\n" + sql[first:])
    _put_dump(ctx, data, manifest=_manifest(data, {}, tables=()))
    return Case(DATABASE)


def _large_truncated(ctx) -> Case:
    """A 20+ MB dump cut in storage, its manifest telling the true size."""
    data = _gz(ctx.dumps["large"])
    key = _put_dump(ctx, data[: len(data) // 2])
    ctx.storage.put_bytes(f"{key}.manifest.json", _manifest(data, {}, tables=()).to_json().encode())
    return Case(DATABASE)


def skewed_clock(ctx) -> Case:
    """A dump written 3 h ago whose name a server in UTC+10 stamped in its local time: read
    as UTC the name says 7 h in the future, which made a stale backup look fresh."""
    written = datetime.now(UTC) - timedelta(hours=3)
    name = (written + timedelta(hours=10)).strftime("%Y%m%d_%H%M%S")
    key = f"database/{DB}_{name}.sql.gz"
    ctx.storage.put_bytes(key, _gz(ctx.dumps["plain"]))
    os.utime(ctx.storage.root / key, (written.timestamp(), written.timestamp()))
    return Case(DATABASE)


def encrypted_case(*, passphrase: str | None = PASSPHRASE, damage: bool = False):
    """The runbook's encrypted copy (`gzip | gpg --symmetric --cipher-algo AES256` under
    `encrypted/`) with one thing wrong."""

    def make(ctx) -> Case:
        data = bytearray(gpg_symmetric(_gz(ctx.dumps["plain"]), PASSPHRASE))
        if damage:
            data[len(data) // 2] ^= 0xFF
        key = f"encrypted/{DB}_{stamp(timedelta(minutes=3))}.sql.gz.gpg"
        ctx.storage.put_bytes(key, bytes(data))
        sections = '[storage.prefixes]\ndatabase = "encrypted/"\n\n' + DATABASE
        sections += 'passphrase_env = "DRILL_DUMP_PASSPHRASE"\n'
        env = {} if passphrase is None else {"DRILL_DUMP_PASSPHRASE": passphrase}
        return Case(sections, env=env)

    return make


# -- files and config -------------------------------------------------------------------------


def files_case(*, drop: str | None = None, alter: str | None = None, extra: str | None = None):
    """A snapshot whose stored files differ from its manifest in one way."""

    def make(ctx) -> Case:
        stored = dict(UPLOADS)
        if drop:
            del stored[drop]
        if alter:
            stored[alter] = _flip(stored[alter], 0.5)
        if extra:
            stored[extra] = b"not in the manifest"
        put_files_snapshot(ctx.storage, stored, listed=UPLOADS)
        return Case(FILES)

    return make


def files_archived(ctx) -> Case:
    """A snapshot file moved to the archive tier: stored, listed, unreadable until restored."""
    key = put_files_snapshot(ctx.storage, UPLOADS)
    ctx.archive(key + "documents/b.pdf")
    return Case(FILES)


def config_case(*, passphrase: str = PASSPHRASE, damage: bool = False, drop: str | None = None):
    """An encrypted config archive with one thing wrong."""

    def make(ctx) -> Case:
        members = {"srv/app/.env.production": ENV_FILE, "srv/app/docker-compose.yml": COMPOSE}
        if drop:
            members = {k: v for k, v in members.items() if not k.endswith(drop)}
        put_config_archive(ctx.storage, members, passphrase=PASSPHRASE, damage=damage)
        return Case(CONFIG, env={"DRILL_CONFIG_PASSPHRASE": passphrase})

    return make


# -- plausibility: a bad backup after a good one ----------------------------------------------

GOOD_UPLOADS = typed_uploads(30)
NGINX = b"server {\n  listen 443 ssl;\n  root /srv/app/public;\n}\n"
CONFIG_FILES = {
    "srv/app/.env.production": ENV_FILE,
    "srv/app/docker-compose.yml": COMPOSE,
    "srv/app/nginx/site.conf": NGINX,
}


def openssl_encrypt(data: bytes) -> bytes:
    """`openssl enc -aes-256-cbc` of `data`: what ransomware leaves in place of a file."""
    argv = ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-pass", "pass:ransom"]
    return subprocess.run(argv, input=data, capture_output=True, check=True, timeout=30).stdout


def drill_once(ctx, sections: str, kind: str, env: dict[str, str] | None = None) -> None:
    """A passing `drill run` over the backups stored so far: the history a monthly drill leaves
    in the report directory the row's own run then uses."""
    url = ctx.storage.url
    s3 = url.startswith("s3")
    config = write_drill_toml(
        ctx.tmp_path, url, sections, endpoint_url=ctx.s3.endpoint_url if s3 else None
    )
    credentials = {
        "AWS_ACCESS_KEY_ID": ctx.s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": ctx.s3.secret_access_key,
        "AWS_DEFAULT_REGION": ctx.s3.region,
    }
    outcome = run_drill(config, kind, env={**os.environ, **credentials, **(env or {})})
    assert outcome.drill(kind)["verdict"] == "pass", outcome.output[-3000:]


def _encrypt_some(files: dict[str, bytes], paths: list[str], rename: str) -> dict[str, bytes]:
    changed = dict(files)
    for path in paths:
        changed[path + rename] = openssl_encrypt(changed.pop(path))
    return changed


def encrypted_uploads(*, count: int, rename: str = "", history: bool = False):
    """A good snapshot of 30 uploads (drilled once when `history`), then a newer one in which
    `count` of them are encrypted in place (and renamed `x.jpg` -> `x.jpg<rename>`)."""

    def make(ctx) -> Case:
        put_files_snapshot(ctx.storage, GOOD_UPLOADS, age=timedelta(hours=2))
        if history:
            drill_once(ctx, FILES, "files")
        victims = list(GOOD_UPLOADS)[:count]
        put_files_snapshot(ctx.storage, _encrypt_some(GOOD_UPLOADS, victims, rename))
        return Case(FILES)

    return make


def encrypted_renamed_at_random(ctx) -> Case:
    """A good snapshot, then one in which 20 of the 30 uploads were encrypted and renamed to
    random names with one new extension (`3f9a1c....crypt`), no longer matching their old ones."""
    put_files_snapshot(ctx.storage, GOOD_UPLOADS, age=timedelta(hours=2))
    newer = dict(GOOD_UPLOADS)
    for path in list(GOOD_UPLOADS)[:20]:
        newer[f"{hashlib.sha256(path.encode()).hexdigest()[:16]}.crypt"] = openssl_encrypt(
            newer.pop(path)
        )
    put_files_snapshot(ctx.storage, newer)
    return Case(FILES)


def encrypted_gradually(ctx) -> Case:
    """A drilled good snapshot, then two undrilled ones, each with 6 more of the 30 uploads
    encrypted: under the threshold against the snapshot before, over it since the drill."""
    put_files_snapshot(ctx.storage, GOOD_UPLOADS, age=timedelta(hours=3))
    drill_once(ctx, FILES, "files")
    paths = list(GOOD_UPLOADS)
    day_one = _encrypt_some(GOOD_UPLOADS, paths[:6], "")
    put_files_snapshot(ctx.storage, day_one, age=timedelta(hours=2))
    put_files_snapshot(ctx.storage, _encrypt_some(day_one, paths[6:12], ""))
    return Case(FILES)


def emptied_uploads(ctx) -> Case:
    """A good snapshot, then one of an uploads directory whose volume was not mounted: only the
    placeholder file underneath."""
    put_files_snapshot(ctx.storage, GOOD_UPLOADS, age=timedelta(hours=2))
    put_files_snapshot(ctx.storage, {".keep": b""})
    return Case(FILES)


def config_file_removed(ctx) -> Case:
    """A good archive (no manifest: its file list is read by opening it), then a newer one
    without the nginx site, a file no `required` names."""
    put_config_archive(
        ctx.storage,
        CONFIG_FILES,
        passphrase=PASSPHRASE,
        age=timedelta(hours=2),
        manifest=False,
    )
    fewer = {k: v for k, v in CONFIG_FILES.items() if not k.endswith("site.conf")}
    put_config_archive(ctx.storage, fewer, passphrase=PASSPHRASE)
    return Case(CONFIG, env={"DRILL_CONFIG_PASSPHRASE": PASSPHRASE})


# -- storage ----------------------------------------------------------------------------------


def vanishing_object(ctx) -> Case:
    """The dump is listed, then deleted while the restore target starts."""
    key = _put_dump(ctx, _gz(ctx.dumps["plain"]))

    def during(pid: int) -> None:
        ctx.wait_for_container(pid)
        ctx.storage_delete(key)

    return Case(DATABASE, during=during)


def s3_errors(status: int, times: int):
    """The dump's GET answers `status` `times` times (a fault proxy in front of real S3)."""

    def make(ctx) -> Case:
        key = _put_dump(ctx, _gz(ctx.dumps["plain"]))
        proxy = ctx.proxy()
        proxy.fail("GET", key.split("/", 1)[1], status=status, times=times)
        return Case(DATABASE, endpoint_url=proxy.endpoint_url)

    return make


def unreachable(ctx) -> Case:
    _put_dump(ctx, _gz(ctx.dumps["plain"]))
    return Case(DATABASE, endpoint_url=f"http://127.0.0.1:{ctx.closed_port()}")


# -- runtime ----------------------------------------------------------------------------------

HANG = (
    b"-- Dumped from database version 15.4\nCREATE TABLE users (id int);\nSELECT pg_sleep(300);\n"
)


def killed_target(ctx) -> Case:
    """The restore target is killed while the restore runs."""
    _put_dump(ctx, _gz(HANG))
    return Case(DATABASE, during=lambda pid: ctx.kill_restore_target(pid))


def hanging_restore(ctx) -> Case:
    _put_dump(ctx, _gz(HANG))
    return Case(DATABASE.replace("[database]\n", '[database]\nrestore_timeout = "5s"\n'))


def refuses_connections(ctx) -> Case:
    """The dump changes the password of the role the drill connects as (a script that
    carries role settings): the restored database then refuses the drill's connections."""
    # A dump cannot close its own database to connections any more: the restore keeps it in
    # the database it created (\\connect is not passed on). A role's password it can change.
    changing = b"ALTER ROLE CURRENT_USER PASSWORD 'set-by-the-dump';\n"
    sql = ctx.dumps["plain"]
    marker = sql.rindex(b"--\n-- PostgreSQL database dump complete")
    _put_dump(ctx, _gz(sql[:marker] + changing + sql[marker:]))
    return Case(DATABASE)


def system_case(app_section: str, *, dump: str = "plain"):
    """The full-system drill with one thing wrong in the application."""

    def make(ctx) -> Case:
        _put_dump(ctx, _gz(ctx.dumps[dump]))
        put_files_snapshot(ctx.storage, UPLOADS)
        return Case(DATABASE + FILES + app_section)

    return make


def stale(ctx) -> Case:
    key = f"database/{DB}_{stamp(timedelta(days=3))}.sql.gz"
    ctx.storage.put_bytes(key, _gz(ctx.dumps["plain"]))
    return Case(DATABASE)


# -- point-in-time recovery: the archives people have (fixtures/pitr.py's real failover) -----


def _pitr_store(ctx, *, without: tuple[str, ...] = ()):
    """The session's failover archive, its shipped store copied into the row's storage."""
    archive = ctx.pitr()
    archive.copy_store(ctx.storage.root, without=without)
    return archive


def _producer_config(ctx, archive, name: str, extra: str = "") -> str:
    """A drill.toml for a producer run into the row's storage."""
    directory = ctx.tmp_path / name
    directory.mkdir()
    return str(write_drill_toml(directory, ctx.url, archive.sections(extra=extra)))


def promoted(ctx) -> Case:
    """Recovery to a time after the promotion: timeline 1's WAL, then timeline 2's."""
    archive = _pitr_store(ctx)
    target = archive.after[1] + (archive.after[2] - archive.after[1]) / 2
    return Case(archive.sections(target=iso(target)), env=archive.env)


def gzip_archive(ctx) -> Case:
    """The WAL shipped for real from a directory where archive_command gzips each file."""
    archive = _pitr_store(ctx, without=("wal/",))
    config = _producer_config(ctx, archive, "shipper", f'archive_dir = "{archive.archive}"')
    shipped = drill_cli("backup", "wal", "--config", config, env=archive.env, stdin=None)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert " 0 shipped" not in shipped.stdout, shipped.stdout
    return Case(archive.sections(), env=archive.env)


def holed(ctx) -> Case:
    """One segment gone from the middle of the window; the target left to chance."""
    archive = ctx.pitr()
    _pitr_store(ctx, without=(f"wal/{archive.middle_segment()}",))
    return Case(archive.sections(), env=archive.env)


def handmade_base(*, imported: bool):
    """A pg_basebackup -Ft -z -X stream made by hand, stored as it is or imported."""

    def make(ctx) -> Case:
        archive = _pitr_store(ctx, without=("base/",))
        if imported:
            config = _producer_config(ctx, archive, "importer")
            made = str(archive.handmade["plain"])
            argv = ("backup", "base", "--config", config, "--import", made)
            done = drill_cli(*argv, env=archive.env, stdin=None)
            assert done.returncode == 0, done.stdout + done.stderr
        else:
            shutil.copytree(archive.handmade["tar"], ctx.storage.root / "base" / "pg_basebackup-1")
        return Case(archive.sections(), env=archive.env)

    return make


def stalled_shipper(ctx) -> Case:
    """The shipper stopped: the newest stored segment older than a 5 s database RPO."""
    archive = _pitr_store(ctx)
    time.sleep(5)
    more = '[targets.rpo]\ndatabase = "5s"'
    return Case(archive.sections(database=False, more=more), env=archive.env)


# -- uploads and config exactly as they were: empty snapshots, links, shared damage ------------


def _write_tree(root, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def empty_newest_snapshot(ctx) -> Case:
    """The original runbook's snapshots (rsync into files/current, cp -al to a dated
    directory): a good one, then one taken after the uploads mount vanished."""
    source = ctx.tmp_path / "uploads"
    _write_tree(source, GOOD_UPLOADS)
    files = ctx.storage.root / "files"
    runbook_snapshot(source, files, stamp(timedelta(hours=2)))
    shutil.rmtree(source)
    source.mkdir()  # the mount point, with nothing mounted on it
    runbook_snapshot(source, files, stamp(timedelta(minutes=5)))
    return Case(FILES)


def stored_link_for_a_file(ctx) -> Case:
    """One snapshot file replaced in the store by a symlink to a host file."""
    key = put_files_snapshot(ctx.storage, UPLOADS)
    host = ctx.tmp_path / "host-file"
    host.write_bytes(b"a host file that was never backed up")
    stored = ctx.storage.root / key / "documents/b.pdf"
    stored.unlink()
    stored.symlink_to(host)
    return Case(FILES)


def listed_below_a_link(ctx) -> Case:
    """A manifest (a crafted or confused one) listing a link `docs` to a host directory and
    a file `docs/planted.txt` under it: unpacking it would write where the link points."""
    key = f"files/{stamp(timedelta(minutes=5))}/"
    data = b"written through a link"
    ctx.storage.put_bytes(key + "docs/planted.txt", data)
    taken = datetime.now(UTC) - timedelta(minutes=5)
    manifest = Manifest(
        "files",
        taken,
        taken,
        format="snapshot",
        files=(FileEntry("docs/planted.txt", len(data), 0o644, hashlib.sha256(data).hexdigest()),),
        links=(LinkEntry("docs", str(ctx.tmp_path)),),
        directories=(DirEntry(".", 0o755),),
    )
    ctx.storage.put_bytes(key.rstrip("/") + ".manifest.json", manifest.to_json().encode())
    return Case(FILES)


def truncated_in_hard_linked_snapshots(ctx) -> Case:
    """`drill backup files` into file:// three times (one upload changed after the first),
    then that upload truncated in place in the newest snapshot: the one before shares the
    inode."""
    source = ctx.tmp_path / "uploads"
    _write_tree(source, GOOD_UPLOADS)
    dest = Destination("files/", storage=ctx.storage, local_dir=ctx.storage.root)
    backup_files(dest, source)
    victim = next(iter(GOOD_UPLOADS))
    (source / victim).write_bytes(GOOD_UPLOADS[victim][:200] + b"a newer version")
    backup_files(dest, source)
    newest = backup_files(dest, source)
    os.truncate(ctx.storage.root / newest.key / victim, 10)
    return Case(FILES)


def _server_config(ctx, *, leave_out: str = "", link_env: bool = False) -> Case:
    """A server's config archived by the runbook's `tar -czf` of absolute paths (exit 2 on a
    missing one; the archive is written all the same), drilled with `[config] paths`."""
    root = ctx.tmp_path / "server"
    paths = config_tree(root)
    if link_env:
        env = root / "srv/app/.env.production"
        (root / "srv/shared").mkdir()
        env.rename(root / "srv/shared/.env")
        env.symlink_to(root / "srv/shared/.env")
    if leave_out:
        os.unlink(root / leave_out)
    archive = ctx.tmp_path / "config.tar.gz"
    runbook_config_archive(paths, archive)
    ctx.storage.put_bytes(
        f"config/config_{stamp(timedelta(minutes=5))}.tar.gz", archive.read_bytes()
    )
    listed = ", ".join(f'"{p}"' for p in paths)
    return Case(f'[config]\npaths = [{listed}]\nrequired = [".env.production"]\n')


def config_path_left_out(ctx) -> Case:
    return _server_config(ctx, leave_out="etc/ssl/private/app.key")


def required_file_links_outside(ctx) -> Case:
    return _server_config(ctx, link_env=True)


def _mirror_after_a_drill(ctx, keep: int) -> Case:
    """The runbook's off-site copy (`aws s3 sync current/ s3://bucket/files/ --delete`) of 30
    uploads, the first `keep` synced a while before the others, drilled green; then the uploads
    mount lost all but those and the next sync's --delete removed the rest from the bucket. A
    sync that only deletes leaves no newer object: the mirror's time goes back."""
    source = ctx.tmp_path / "current"
    env = {**os.environ, **ctx.s3_env()}
    first = dict(list(GOOD_UPLOADS.items())[:keep])
    if first:
        _write_tree(source, first)
        runbook_mirror(source, ctx.storage.bucket, ctx.s3.endpoint_url, env)
        time.sleep(1.5)  # LastModified is kept to the second
    _write_tree(source, {p: d for p, d in GOOD_UPLOADS.items() if p not in first})
    runbook_mirror(source, ctx.storage.bucket, ctx.s3.endpoint_url, env)
    drill_once(ctx, FILES, "files")
    for path in list(GOOD_UPLOADS)[keep:]:
        (source / path).unlink()
    runbook_mirror(source, ctx.storage.bucket, ctx.s3.endpoint_url, env)
    return Case(FILES)


def mirror_shrunk(ctx) -> Case:
    return _mirror_after_a_drill(ctx, keep=3)


def mirror_emptied(ctx) -> Case:
    return _mirror_after_a_drill(ctx, keep=0)


S3_MIRROR_ROWS = {
    "uploads mirror shrunk by sync --delete",
    "uploads mirror emptied by sync --delete",
}
"""Rows drilled over the embedded S3 (the mirror is an object store's)."""


FAULTS: list[Fault] = [
    # database dumps
    Fault(
        "flipped byte in the gzip stream",
        "database",
        "one byte XOR 0xFF mid-file",
        "database",
        "gzip stream is corrupt",
        dump_case(lambda d: _flip(_gz(d["plain"]), 0.5)),
    ),
    Fault(
        "dump cut at 10%",
        "database",
        "first 10% of the .gz kept",
        "database",
        "ends early",
        dump_case(_cut(0.10)),
    ),
    Fault(
        "dump cut at 50%",
        "database",
        "first 50% of the .gz kept",
        "database",
        "ends early",
        dump_case(_cut(0.50)),
    ),
    Fault(
        "dump cut at 99%",
        "database",
        "first 99% of the .gz kept",
        "database",
        "ends early",
        dump_case(_cut(0.99)),
    ),
    Fault(
        "zero-byte dump",
        "database",
        "empty file",
        "database",
        "is empty (0 bytes)",
        dump_case(lambda d: b""),
    ),
    Fault(
        "valid gzip of garbage",
        "database",
        "gzip of random bytes",
        "database",
        "cannot tell the Postgres major",
        dump_case(lambda d: _gz(os.urandom(4096))),
    ),
    Fault(
        "dump of another database",
        "database",
        "pg_dump of a database with no users",
        "database",
        'relation "users" does not exist',
        dump_case(lambda d: _gz(d["other_db"])),
    ),
    Fault(
        "schema-only dump",
        "database",
        "pg_dump --schema-only",
        "database",
        "every restored table is empty",
        dump_case(lambda d: _gz(d["schema_only"])),
    ),
    Fault(
        "SQL error midway through restore",
        "database",
        "SELECT 1/0; inserted mid-dump",
        "database",
        "division by zero",
        dump_case(lambda d: _gz(_with_sql(d["plain"], b"SELECT 1/0;"))),
    ),
    Fault(
        "manifest sha256 disagrees",
        "database",
        "manifest sha256 = 000…",
        "database",
        "sha256 mismatch",
        manifest_case(sha256="0" * 64),
    ),
    Fault(
        "manifest lists a table the dump lacks",
        "database",
        "manifest adds public.invoices",
        "database",
        "missing: public.invoices",
        manifest_case(extra_table="invoices"),
    ),
    Fault(
        "manifest lists an object the restore lacks",
        "database",
        "manifest inventory adds index public.invoices_idx",
        "database",
        "declared by the manifest but missing after the restore: index public.invoices_idx",
        manifest_case(extra_index="public.invoices_idx"),
    ),
    Fault(
        "row count disagrees with the manifest",
        "database",
        "manifest users = 999999",
        "database",
        "public.users: manifest 999999",
        manifest_case(users=999_999),
    ),
    Fault(
        "plain dump cut in its pre-data section",
        "database",
        "cut after CREATE TABLE transactions, valid gzip",
        "database",
        "ends in its pre-data section after TABLE public.transactions",
        dump_case(_cut_after(b"Name: transactions; Type: TABLE;")),
    ),
    Fault(
        "plain dump cut inside a table's data",
        "database",
        "cut after 100 rows of COPY transactions, valid gzip",
        "database",
        "ends inside the data of public.transactions",
        dump_case(_cut_in_copy(b"public.transactions", 100)),
    ),
    Fault(
        "plain dump cut after its data",
        "database",
        "cut after the last COPY block, valid gzip",
        "database",
        "has no post-data section: no primary keys",
        dump_case(_after_data),
    ),
    Fault(
        "plain dump cut in its post-data section",
        "database",
        "cut after the first index, valid gzip",
        "database",
        "ends in its post-data section after INDEX public.transactions_user_id_idx",
        dump_case(_cut_after(b"Type: INDEX;")),
    ),
    Fault(
        "custom dump missing a table's data",
        "database",
        "pg_dump -Fc --exclude-table-data=public.transactions",
        "database",
        "no data for public.transactions",
        dump_case(lambda d: d["custom_without_transactions"], ext=".dump"),
    ),
    Fault(
        "directory dump missing a table's data file",
        "database",
        "pg_dump -Fd, the transactions data file deleted, no manifest",
        "database",
        "(the data of public.transactions)",
        _directory_without("public.transactions"),
    ),
    Fault(
        "dump whose objects partly failed to restore",
        "database",
        "index and foreign-key statements filtered out, headers kept",
        "database",
        "declared by the dump but missing after the restore: foreign key",
        dump_case(_stripped_post_data),
    ),
    Fault(
        "wiped estate after a good history",
        "database",
        "a passing drill, then a dump after 99% of rows deleted",
        "database",
        "against the last passing drill",
        wiped_after_history,
        absent="against the backup before it",
    ),
    Fault(
        "a backup a tenth the size of the one before it",
        "database",
        "two seed-style dumps, no manifests, the newer after a wipe",
        "database",
        "under 10% of the",
        a_tenth_of_the_size,
    ),
    Fault(
        "large dump whose restore fails for its own reason",
        "database",
        "25 MB gzip with a true manifest, SELECT 1/0 at its start",
        "database",
        "division by zero",
        _large_failing,
        absent="size mismatch",
    ),
    Fault(
        "large dump truncated in storage",
        "database",
        "25 MB gzip cut in half, manifest with the true size",
        "database",
        "size mismatch",
        _large_truncated,
    ),
    Fault(
        "a name 10 h ahead of its write time",
        "database",
        "dump written 3 h ago, named in UTC+10 local time (7 h in the future as UTC)",
        "database",
        "RPO over target: the backup is 3h",
        skewed_clock,
    ),
    Fault(
        "encrypted dump, wrong passphrase",
        "database",
        "runbook's .sql.gz.gpg, DRILL_DUMP_PASSPHRASE set to another value",
        "database",
        "gpg could not decrypt it: wrong passphrase",
        encrypted_case(passphrase="not the passphrase"),
    ),
    Fault(
        "encrypted dump, passphrase variable not set",
        "database",
        "runbook's .sql.gz.gpg, [database] passphrase_env names an unset variable",
        "database",
        "the passphrase variable DRILL_DUMP_PASSPHRASE is not set",
        encrypted_case(passphrase=None),
    ),
    Fault(
        "encrypted dump, damaged ciphertext",
        "database",
        "one byte flipped mid-file in the runbook's .sql.gz.gpg",
        "database",
        "corrupt",
        encrypted_case(damage=True),
    ),
    Fault(
        "custom-format dump with a damaged TOC",
        "database",
        "200 random bytes in the header/TOC",
        "database",
        "cannot read the archive's table of contents",
        dump_case(_damaged_toc, ext=".dump"),
    ),
    # files
    Fault(
        "an upload missing",
        "files",
        "one file not stored, still in the manifest",
        "files",
        "documents/b.pdf",
        files_case(drop="documents/b.pdf"),
    ),
    Fault(
        "an upload altered",
        "files",
        "one byte flipped in one stored file",
        "files",
        "avatars/a.png",
        files_case(alter="avatars/a.png"),
    ),
    Fault(
        "an extra upload",
        "files",
        "a stored file absent from the manifest",
        "files",
        "stray.txt",
        files_case(extra="stray.txt"),
    ),
    Fault(
        "a snapshot file unreadable",
        "files",
        "one object moved to GLACIER",
        "files",
        "archived",
        files_archived,
    ),
    # config
    Fault(
        "wrong passphrase",
        "config",
        "DRILL_CONFIG_PASSPHRASE set to another value",
        "config",
        "wrong passphrase",
        config_case(passphrase="not the passphrase"),
    ),
    Fault(
        "corrupted config archive",
        "config",
        "one byte flipped in the .gpg",
        "config",
        "corrupt",
        config_case(damage=True),
    ),
    Fault(
        "required config file missing",
        "config",
        "docker-compose.yml not archived",
        "config",
        "docker-compose.yml",
        config_case(drop="docker-compose.yml"),
    ),
    # storage
    Fault(
        "object disappears between listing and fetch",
        "storage",
        "dump deleted while the restore target starts",
        "database",
        "no such object",
        vanishing_object,
    ),
    Fault(
        "S3 answers 500 twice, then succeeds",
        "storage",
        "fault proxy: 2 x 500 on the dump's GET",
        "database",
        "",
        s3_errors(500, 2),
        expect="pass",
        exit=0,
    ),
    Fault(
        "S3 answers 403",
        "storage",
        "fault proxy: 403 on every GET of the dump",
        "database",
        "access denied",
        s3_errors(403, 10**6),
    ),
    Fault(
        "storage unreachable",
        "storage",
        "endpoint on a closed 127.0.0.1 port",
        "database",
        "unreachable",
        unreachable,
    ),
    # runtime
    Fault(
        "restore container killed midway",
        "runtime",
        "docker kill of the target during psql",
        "database",
        "container died during the restore",
        killed_target,
    ),
    Fault(
        "the database refuses connections",
        "runtime",
        "dump sets a new password for the drill's role",
        "database",
        "refuses connections",
        refuses_connections,
    ),
    Fault(
        "the API answers 503 on /health",
        "runtime",
        "app started without its DATABASE_URL",
        "system",
        "/health answered 503",
        system_case('[app]\ndatabase_env = "APP_DATABASE_URL"\n'),
    ),
    Fault(
        "the API answers 500 on its health path",
        "runtime",
        "health path /users/count on a dump with no users",
        "system",
        "answered 500",
        system_case('[app]\nhealth_path = "/users/count"\n', dump="other_db"),
    ),
    Fault(
        "the API never starts",
        "runtime",
        "[app] image whose process exits at once",
        "system",
        "exited before it was ready",
        system_case('[app]\nimage = "recovery-drills/postgres:15"\n'),
    ),
    Fault(
        "a restore that hangs",
        "runtime",
        "pg_sleep(300) in the dump, restore_timeout 5s",
        "database",
        "did not finish within its bound of 5 s",
        hanging_restore,
    ),
    Fault(
        "no image for the backup's major",
        "runtime",
        "dump header says PostgreSQL 9",
        "database",
        "no image for PostgreSQL 9",
        dump_case(
            lambda d: _gz(d["plain"].replace(b"database version 15.", b"database version 9.", 1))
        ),
        exit=3,
    ),
    # freshness
    Fault(
        "backup older than its RPO",
        "freshness",
        "newest dump named 3 days ago",
        "freshness",
        "newest backup within RPO",
        stale,
    ),
    # plausibility of uploads and config: a backup that restores cleanly, after a good one,
    # of an estate that was emptied, encrypted or lost a file
    Fault(
        "uploads mass-encrypted in place",
        "files",
        "openssl enc -aes-256-cbc on 20 of 30 uploads in a newer snapshot, after a passing drill",
        "files",
        "uploads look encrypted: 20 of the 30 files before",
        encrypted_uploads(count=20, history=True),
    ),
    Fault(
        "uploads encrypted and renamed",
        "files",
        "20 of 30 uploads encrypted and renamed x.jpg -> x.jpg.locked in a newer snapshot",
        "files",
        "renamed to *.locked",
        encrypted_uploads(count=20, rename=".locked"),
    ),
    Fault(
        "uploads encrypted under random names",
        "files",
        "20 of 30 uploads encrypted and renamed to <random>.crypt in a newer snapshot",
        "files",
        "20 removed files replaced by header-less files of new classes (.crypt 20)",
        encrypted_renamed_at_random,
    ),
    Fault(
        "uploads encrypted over two snapshots",
        "files",
        "6 more of 30 uploads encrypted in each of two snapshots after a passing drill",
        "files",
        "plausible against the last passing drill: uploads look encrypted",
        encrypted_gradually,
    ),
    Fault(
        "uploads snapshot emptied",
        "files",
        "newest snapshot holds only .keep, the one before 30 uploads",
        "files",
        "the file count dropped from 30 to 1",
        emptied_uploads,
    ),
    Fault(
        "a config file removed",
        "config",
        "nginx/site.conf left out of the newest archive (not required)",
        "config",
        "config files gone from config/config_",
        config_file_removed,
    ),
    # point-in-time recovery: WAL and base backups as people have them, from a real failover
    Fault(
        "a timeline switch (promote)",
        "pitr",
        "standby promoted, heartbeat on timeline 2; target after the switch",
        "pitr",
        "",
        promoted,
        expect="pass",
        exit=0,
    ),
    Fault(
        "WAL archived gzip-compressed",
        "pitr",
        "archive_command gzip < %p > %f.gz; shipped by drill backup wal",
        "pitr",
        "",
        gzip_archive,
        expect="pass",
        exit=0,
    ),
    Fault(
        "a hole in the WAL archive",
        "pitr",
        "one segment deleted mid-window; random target",
        "pitr",
        "the WAL is not continuous from base/",
        holed,
    ),
    Fault(
        "a base backup made by hand",
        "pitr",
        "pg_basebackup -Ft -z output stored under base/ as it is",
        "pitr",
        "drill backup base --import",
        handmade_base(imported=False),
    ),
    Fault(
        "a base backup made by hand, imported",
        "pitr",
        "pg_basebackup -Fp output through drill backup base --import",
        "pitr",
        "",
        handmade_base(imported=True),
        expect="pass",
        exit=0,
    ),
    Fault(
        "a stalled WAL shipper",
        "pitr",
        "drill backup wal not run; newest stored segment older than the 5 s database RPO",
        "freshness",
        "wal: newest segment within the database RPO",
        stalled_shipper,
    ),
    # uploads and config exactly as they were: an empty newest snapshot, links never
    # followed, damage shared by hard-linked snapshots, config paths checked
    Fault(
        "newest uploads snapshot empty",
        "files",
        "runbook rsync + cp -al of 30 uploads, then of the emptied mount point",
        "files",
        "holds no files (an empty snapshot",
        empty_newest_snapshot,
    ),
    Fault(
        "a stored link where a file was backed up",
        "files",
        "one snapshot file replaced in the store by a symlink to a host file",
        "files",
        "not a file: never followed",
        stored_link_for_a_file,
    ),
    Fault(
        "a snapshot entry listed below a link",
        "files",
        "manifest: docs -> a host directory, and docs/planted.txt",
        "files",
        "would write where the link points; refused",
        listed_below_a_link,
    ),
    Fault(
        "an upload truncated in hard-linked snapshots",
        "files",
        "drill backup files x3 into file://, the newest copy truncated in place",
        "files",
        "(hard links: damaged there too); intact in files/",
        truncated_in_hard_linked_snapshots,
    ),
    Fault(
        "a configured path missing from the archive",
        "config",
        "runbook tar -czf without the TLS key (tar exit 2)",
        "config",
        "every configured path is in the archive, as what it was: missing from the archive",
        config_path_left_out,
    ),
    Fault(
        "a required config file links outside the archive",
        "config",
        "runbook tar -czf; .env.production a link to an unarchived shared .env",
        "config",
        "which the archive does not hold",
        required_file_links_outside,
    ),
    # the runbook's off-site uploads mirror (aws s3 sync --delete)
    Fault(
        "uploads mirror shrunk by sync --delete",
        "files",
        "aws s3 sync of 30 uploads, a passing drill, then 27 gone and synced again",
        "files",
        "the file count dropped from 30 to 3",
        mirror_shrunk,
    ),
    Fault(
        "uploads mirror emptied by sync --delete",
        "files",
        "aws s3 sync of 30 uploads, a passing drill, then all gone and synced again",
        "files",
        "no files backups under",
        mirror_emptied,
    ),
]


# -- the full-system drill of any application: apps that start and die, ask for a credential,
# or whose image is not on the machine (the accounts service, fixtures/accounts, stands in
# for an app unlike the sample one; its crash-after-start mode is its own, not a patch)

TOKEN_ENV = "DRILL_FAULT_HEALTH_TOKEN"


def accounts_case(*lines: str, headers: bool = True, secret: bool = True, **env: str):
    """The full-system drill of the accounts service, one container, one thing wrong."""

    def make(ctx) -> Case:
        _put_dump(ctx, _gz(ctx.dumps["plain"]))
        put_files_snapshot(ctx.storage, UPLOADS)
        variables = {
            "HEALTH_TOKEN": "${" + TOKEN_ENV + "}",
            "DB_HOST": "{db_host}",
            "DB_NAME": "{db_name}",
            "DB_USER": "{db_user}",
            "DB_PASSWORD": "{db_password}",
            **({"SECRET_KEY": "not-a-real-secret"} if secret else {}),
            **env,
        }
        app = [
            "[app]",
            f'image = "{build_accounts_image(ctx.client)}"',
            "port = 8000",
            'health_path = "/healthz"',
            'uploads_dir = "/srv/media"',
            'uploads_url_path = "/media/"',
            'count_path = ""',
            'start_timeout = "20s"',
            'soak = "3s"',
            *lines,
            *([f'headers = {{ "X-Health-Token" = "{TOKEN_ENV}" }}'] if headers else []),
            "[app.env]",
            *(f'{key} = "{value}"' for key, value in variables.items()),
        ]
        sections = DATABASE + FILES + "\n".join(app) + "\n[runtime]\npull = false\n"
        return Case(sections, env={TOKEN_ENV: "fault-token-not-real"})

    return make


def missing_service_image(ctx) -> Case:
    """The sample app's compose file, with a cache service whose image is not here."""
    _put_dump(ctx, _gz(ctx.dumps["plain"]))
    put_files_snapshot(ctx.storage, UPLOADS)
    app_image = images.ensure_app_image(ctx.client)
    config = write_config_files(ctx.tmp_path / "config", "not-a-real-secret", app_image)
    members = {f"srv/drishti/{p.name}": p.read_bytes() for p in config}
    compose = members["srv/drishti/docker-compose.yml"].decode()
    cache = "  cache:\n    image: redis:7-alpine\n\nvolumes:"
    members["srv/drishti/docker-compose.yml"] = compose.replace("\nvolumes:", cache).encode()
    put_config_archive(ctx.storage, members)
    app = '[config]\n[app]\ncompose_file = "docker-compose.yml"\n[runtime]\npull = false\n'
    return Case(DATABASE + FILES + app)


FAULTS += [
    Fault(
        "the app crashes after it first answers healthy",
        "runtime",
        "accounts service with CRASH_AFTER=1: exit 1 a second after its first 200",
        "system",
        "the api container exited (code 1)",
        accounts_case(CRASH_AFTER="1"),
    ),
    Fault(
        "health path behind a token, no credential configured",
        "runtime",
        "accounts service's /healthz wants X-Health-Token; no [app] headers",
        "system",
        "answered 401: the health path wants a credential",
        accounts_case(headers=False),
    ),
    Fault(
        "the app refuses to start without its secret",
        "runtime",
        "accounts service with no SECRET_KEY in its environment",
        "system",
        "SECRET_KEY is not set",
        accounts_case(secret=False),
    ),
    Fault(
        "the app's image is not on the machine",
        "runtime",
        "[app] image names an image never built or loaded here; pulls off",
        "system",
        "drishti/api:2025-01 is not on this machine",
        system_case('[app]\nimage = "drishti/api:2025-01"\n[runtime]\npull = false\n'),
        exit=3,
    ),
    Fault(
        "a compose service's image is not on the machine",
        "runtime",
        "restored docker-compose.yml with a redis:7-alpine cache service; pulls off",
        "system",
        "compose service cache redis:7-alpine is not on this machine",
        missing_service_image,
        exit=3,
    ),
]


def wait_until(predicate: Callable[[], object], bound: float, what: str) -> object:
    """Poll `predicate` until truthy; fail the row after `bound` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def catalogue_markdown(rows: list[dict]) -> str:
    """The catalogue's results as a Markdown table."""
    lines = [
        "| fault | injected by | drill | expected | got | cause seen |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cause = (row["cause"] or "").replace("|", "\\|").replace("\n", " ")
        if len(cause) > 160:
            cause = cause[:157] + "..."
        lines.append(
            f"| {row['name']} | {row['injection']} | {row['drill']} | {row['expected']} | "
            f"{row['got']} | {cause} |"
        )
    return "\n".join(lines) + "\n"
