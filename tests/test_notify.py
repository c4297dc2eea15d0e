"""Heard when it fails: `[notify]` and `[metrics]` through `drill run` and `drill status`, with
real receivers on 127.0.0.1 (an HTTP server for the webhook, the dead-man's switch and the
pushgateway; aiosmtpd for the mail) and the metrics read by prometheus_client's own parser.

A failed files drill (a missing upload) posts a Slack-compatible message naming the cause and
mails the HTML report; a passing one pings the switch and tells nobody else. Channels that
refuse or hang are reported, bounded, and leave the run's exit code as it was. No message
holds a secret."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drills.config import load_config
from drills.config.errors import ConfigError
from drills.report.evidence import verify_run
from fixtures.estate_backups import drill_cli, put_files_snapshot, run_drill, uploads

GONE = "documents/file 004.pdf"
TOKEN = "T0001/B0001/s3cr3tWebhookToken"
SMTP_PASSWORD = "smtp-Pa55word-never-shown"


def _config(tmp_path, storage_url: str, notify: str, metrics: str = "") -> object:
    config = tmp_path / "drill.toml"
    config.write_text(
        f'[estate]\nname = "drishti"\n\n[storage]\nurl = "{storage_url}"\n\n[files]\n\n'
        f'[report]\ndir = "{tmp_path / "reports"}"\nhtml = true\npytest_html = false\n'
        f"allure = false\n\n[notify]\n{notify}\n[metrics]\n{metrics}\n"
    )
    return config


def _snapshot_missing_an_upload(storage) -> None:
    """A snapshot whose manifest lists an upload it lacks: the files drill fails naming it."""
    files = uploads()
    put_files_snapshot(storage, {p: d for p, d in files.items() if p != GONE}, listed=files)


def _every_channel(http_receiver, smtp_receiver, *to: str) -> str:
    """[notify] keys for the webhook and the switch on `http_receiver`, mail to `to`."""
    return (
        f'webhook_url = "{http_receiver.url}/hooks/{TOKEN}"\n'
        f'ping_url = "{http_receiver.url}/ping/switch-1"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_receiver.port}\nsmtp_starttls = false\n'
        f'smtp_from = "drills@example.com"\nsmtp_to = {json.dumps(list(to))}\n'
    )


def _families(text: str) -> dict[tuple[str, str | None], float]:
    """Every sample of the exposition text, by (name, kind label), parsed by prometheus_client."""
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            assert sample.labels["estate"] == "drishti"
            samples[(sample.name, sample.labels.get("kind"))] = sample.value
    return samples


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def test_failed_drill_posts_the_cause_mails_the_report_and_writes_metrics(
    tmp_path, local_storage, http_receiver, smtp_receiver
):
    _snapshot_missing_an_upload(local_storage)
    textfile = tmp_path / "textfile" / "drills.prom"
    textfile.parent.mkdir()
    config = _config(
        tmp_path,
        local_storage.url,
        _every_channel(http_receiver, smtp_receiver, "ops@example.com", "cto@example.com")
        + 'smtp_username_env = "SMTP_USER"\nsmtp_password_env = "SMTP_PASSWORD"\n',
        f'textfile = "{textfile}"\npushgateway_url = "{http_receiver.url}"\n',
    )
    outcome = run_drill(config, "files", env=_env(SMTP_USER="drills", SMTP_PASSWORD=SMTP_PASSWORD))

    assert outcome.exit == 1, outcome.output  # what the failed drill says, notified or not
    posts = {r.path: r for r in http_receiver.requests}
    assert set(posts) == {f"/hooks/{TOKEN}", "/metrics/job/recovery_drills/estate/drishti"}
    hook = posts[f"/hooks/{TOKEN}"]
    assert hook.method == "POST"
    assert hook.headers["Content-Type"] == "application/json"
    text = json.loads(hook.body)["text"]
    assert "Recovery drill FAILED: drishti" in text
    assert (
        f"- files: FAIL: check failed: every file in the manifest is restored: missing: {GONE}"
        in (text)
    )
    assert f"Report: {outcome.run_dir / 'drill-report.html'}" in text

    ((sender, recipients, mail),) = smtp_receiver.mails
    assert sender == "drills@example.com"
    assert recipients == ["ops@example.com", "cto@example.com"]
    assert mail["Subject"] == "Recovery drill FAILED: drishti"
    assert smtp_receiver.logins == [("drills", SMTP_PASSWORD)]  # from the environment
    assert f"missing: {GONE}" in mail.get_body(("plain",)).get_content()
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_filename() == "drill-report.html"
    assert attachment.get_content_type() == "text/html"
    report = (outcome.run_dir / "drill-report.html").read_bytes()
    assert attachment.get_payload(decode=True) == report  # byte for byte: the sealed report
    assert "×" in attachment.get_content()  # its charset is said

    samples = _families(textfile.read_text())
    assert samples[("drill_run_success", None)] == 0
    assert samples[("drill_last_run_success", "files")] == 0
    assert samples[("drill_rto_target_seconds", "files")] == 4 * 3600
    assert samples[("drill_rpo_target_seconds", "files")] == 24 * 3600
    assert 0 < samples[("drill_rto_seconds", "files")] < 4 * 3600
    assert 300 <= samples[("drill_backup_age_seconds", "files")] < 300 + 120  # stored 5 min ago
    assert samples[("drill_checks_failed", "files")] >= 1
    assert samples[("drill_checks_passed", "files")] >= 1
    assert abs(samples[("drill_run_timestamp_seconds", None)] - time.time()) < 300
    pushed = posts["/metrics/job/recovery_drills/estate/drishti"]
    assert pushed.method == "PUT"
    assert _families(pushed.body.decode()) == samples

    record = outcome.document["notifications"]
    assert {n["channel"]: n["ok"] for n in record} == {
        "webhook": True,
        "email": True,
        "metrics textfile": True,
        "pushgateway": True,
    }  # no ping: the dead-man's switch hears only of passing runs
    assert verify_run(outcome.run_dir, allow_unsigned=True) == []  # sealed with the record

    # No secret anywhere a person or a machine reads.
    everything = [outcome.output, hook.body.decode(), mail.as_string(), pushed.body.decode()]
    everything += [p.read_text(errors="replace") for p in outcome.run_dir.rglob("*") if p.is_file()]
    for text in everything:
        assert SMTP_PASSWORD not in text
        assert "s3cr3tWebhookToken" not in text


def test_passing_drill_pings_the_switch_and_tells_no_one_else(
    tmp_path, local_storage, http_receiver, smtp_receiver
):
    put_files_snapshot(local_storage, uploads())
    textfile = tmp_path / "drills.prom"
    config = _config(
        tmp_path,
        local_storage.url,
        _every_channel(http_receiver, smtp_receiver, "ops@example.com"),
        f'textfile = "{textfile}"\n',
    )
    quiet = run_drill(config, "files")
    assert quiet.exit == 0, quiet.output
    assert [(r.method, r.path) for r in http_receiver.requests] == [("GET", "/ping/switch-1")]
    assert smtp_receiver.mails == []
    samples = _families(textfile.read_text())
    assert samples[("drill_run_success", None)] == 1
    assert samples[("drill_last_run_success", "files")] == 1
    assert samples[("drill_checks_failed", "files")] == 0

    published = "https://ci.example.com/drills/{run}/drill-report.html"
    always = run_drill(
        config, "files", "--set", "notify.when=always", "--set", f"notify.report_url={published}"
    )
    assert always.exit == 0, always.output
    hooks = [r for r in http_receiver.requests if r.path.startswith("/hooks/")]
    assert len(hooks) == 1
    text = json.loads(hooks[0].body)["text"]
    assert "Recovery drill passed: drishti" in text
    assert "- files: pass (RTO " in text
    run = always.run_dir.name
    assert f"Report: https://ci.example.com/drills/{run}/drill-report.html" in text
    ((_, _, mail),) = smtp_receiver.wait_for(1)
    assert mail["Subject"] == "Recovery drill passed: drishti"


def test_refused_and_hung_channels_are_reported_bounded_and_change_no_exit_code(
    tmp_path, local_storage, silent_port, trickle_port, refused_port
):
    """The webhook's server never answers (its socket timeout fires), the mail server drips
    one byte at a time (only the overall bound stops it), the pushgateway refuses, the
    textfile's directory is missing."""
    _snapshot_missing_an_upload(local_storage)
    config = _config(
        tmp_path,
        local_storage.url,
        f'timeout = "2s"\nwebhook_url = "http://127.0.0.1:{silent_port}/hooks/{TOKEN}"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {trickle_port}\nsmtp_starttls = false\n'
        'smtp_from = "drills@example.com"\nsmtp_to = ["ops@example.com"]\n',
        f'textfile = "{tmp_path / "no-such-dir" / "drills.prom"}"\n'
        f'pushgateway_url = "http://127.0.0.1:{refused_port}"\ntimeout = "2s"\n',
    )
    started = time.monotonic()
    outcome = run_drill(config, "files", timeout=120)
    took = time.monotonic() - started

    assert outcome.exit == 1, outcome.output  # the drill's own verdict, not the channels'
    assert "drill: FAIL" in outcome.output
    assert not any(n["ok"] for n in outcome.document["notifications"])
    failed = {n["channel"]: n["detail"] for n in outcome.document["notifications"]}
    hung = f"http://127.0.0.1:{silent_port}/***: no answer within 2s"
    assert failed["webhook"] == hung
    assert failed["email"] == "gave up after 4s"  # the 2 s timeout and 2 s of grace
    assert failed["pushgateway"] == f"http://127.0.0.1:{refused_port}/***: connection refused"
    assert failed["metrics textfile"].endswith("No such file or directory")
    assert f"drill: notify webhook FAILED: {hung}" in outcome.output
    assert "drill: notify email FAILED: gave up after 4s" in outcome.output
    assert "s3cr3tWebhookToken" not in outcome.output
    seconds = {n["channel"]: n["seconds"] for n in outcome.document["notifications"]}
    assert 2 <= seconds["webhook"] < 4, seconds  # waited its 2 s, then gave up
    assert 4 <= seconds["email"] < 5, seconds
    assert seconds["pushgateway"] < 1, seconds  # side by side: none waits for another
    assert took < 90, f"the run took {took:.0f}s"


def test_status_notify_sends_the_overdue_kind(tmp_path, local_storage, http_receiver):
    put_files_snapshot(local_storage, uploads(), age=timedelta(days=2))
    textfile = tmp_path / "node" / "drill.prom"
    textfile.parent.mkdir()
    textfile.write_text("# the last run's metrics, which the status must not replace\n")
    config = _config(
        tmp_path,
        local_storage.url,
        f'webhook_url = "{http_receiver.url}/hooks/{TOKEN}"\n',
        f'textfile = "{textfile}"\n',
    )
    result = drill_cli("status", "--config", str(config), "--notify")
    assert result.returncode == 1, result.stdout + result.stderr  # overdue, as without --notify
    samples = _families((tmp_path / "node" / "drill-status.prom").read_text())
    assert samples[("drill_backup_newest_age_seconds", "files")] > 2 * 86400 - 60
    assert samples[("drill_backup_within_rpo", "files")] == 0
    assert samples[("drill_backup_rpo_target_seconds", "files")] == 86400
    assert textfile.read_text().startswith("# the last run's metrics")
    (hook,) = http_receiver.wait_for(1)
    text = json.loads(hook.body)["text"]
    assert "Backups NEED ATTENTION: drishti" in text
    assert "files: OVERDUE: newest files/" in text
    assert "old (RPO 24h 00m)" in text

    put_files_snapshot(local_storage, uploads())  # fresh again: nothing to say
    fresh = drill_cli("status", "--config", str(config), "--notify")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert len(http_receiver.wait_for(2, timeout=1)) == 1
    samples = _families((tmp_path / "node" / "drill-status.prom").read_text())
    assert samples[("drill_backup_within_rpo", "files")] == 1


def test_notify_settings_are_checked_and_token_urls_hidden_in_reports(tmp_path):
    bad = tmp_path / "drill.toml"
    bad.write_text('[notify]\nsmtp_host = "mail.example.com"\n')
    with pytest.raises(ConfigError, match=r"smtp_from and smtp_to are needed"):
        load_config(bad, env={})
    bad.write_text('[metrics]\ntextfile = "/var/lib/node_exporter/drills.txt"\n')
    with pytest.raises(ConfigError, match=r'must end with "\.prom"'):
        load_config(bad, env={})
    env = {"DRILL_NOTIFY_WEBHOOK_URL": f"https://hooks.example.com/services/{TOKEN}"}
    config = load_config(None, env=env)
    assert config.notify.webhook_url.endswith(TOKEN)
    assert config.redacted()["notify"]["webhook_url"] == "https://hooks.example.com/***"


def test_mail_goes_over_starttls_only_to_a_server_it_trusts(
    tmp_path, local_storage, smtp_tls_receiver
):
    """STARTTLS is the default and the certificate is verified: with the server's CA trusted
    the mail and the login go through encrypted; without, nothing is sent, and the run says
    why."""
    _snapshot_missing_an_upload(local_storage)
    config = _config(
        tmp_path,
        local_storage.url,
        f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp_tls_receiver.port}\n'
        'smtp_from = "drills@example.com"\nsmtp_to = ["ops@example.com"]\n'
        'smtp_username_env = "SMTP_USER"\nsmtp_password_env = "SMTP_PASSWORD"\n',
    )
    login = {"SMTP_USER": "drills", "SMTP_PASSWORD": SMTP_PASSWORD}
    trusted = run_drill(
        config, "files", env=_env(**login, SSL_CERT_FILE=str(smtp_tls_receiver.ca_file))
    )
    assert trusted.exit == 1, trusted.output
    ((_, _, mail),) = smtp_tls_receiver.mails
    assert mail["Subject"] == "Recovery drill FAILED: drishti"
    assert smtp_tls_receiver.logins == [("drills", SMTP_PASSWORD)]  # only ever after STARTTLS

    untrusted_env = {k: v for k, v in _env(**login).items() if k != "SSL_CERT_FILE"}
    untrusted = run_drill(config, "files", env=untrusted_env)
    assert untrusted.exit == 1, untrusted.output
    (email,) = untrusted.document["notifications"]
    assert email["ok"] is False
    assert email["detail"].startswith(f"SMTP 127.0.0.1:{smtp_tls_receiver.port}: ")
    assert "certificate verify failed: self-signed certificate" in email["detail"]
    assert len(smtp_tls_receiver.mails) == 1  # nothing more was sent
    assert len(smtp_tls_receiver.logins) == 1
    assert SMTP_PASSWORD not in untrusted.output


def test_a_run_that_did_not_complete_is_announced_as_a_failure(tmp_path, http_receiver):
    """`drill run` calls this when pytest ends without a verdict (interrupted, broken)."""
    from drills.notify import announce_incomplete

    textfile = tmp_path / "drills.prom"
    config = _config(
        tmp_path,
        "file:///srv/backups",
        f'webhook_url = "{http_receiver.url}/hooks/{TOKEN}"\n'
        f'ping_url = "{http_receiver.url}/ping/switch-1"\n',
        f'textfile = "{textfile}"\n',
    )
    run_dir = tmp_path / "reports" / "20250115T020000.000000Z"
    run_dir.mkdir(parents=True)
    deliveries = announce_incomplete(
        run_dir, load_config(config, env={}), "the run did not complete (pytest exit 2)"
    )
    assert [(d.channel, d.ok) for d in deliveries] == [
        ("webhook", True),
        ("metrics textfile", True),
    ]
    (hook,) = http_receiver.requests  # no ping: not a pass
    text = json.loads(hook.body)["text"]
    assert "Recovery drill DID NOT COMPLETE: drishti" in text
    assert "the run did not complete (pytest exit 2)" in text
    assert _families(textfile.read_text()) == {
        ("drill_run_timestamp_seconds", None): pytest.approx(time.time(), abs=60),
        ("drill_run_success", None): 0,
    }


def test_a_record_the_notifier_cannot_read_is_reported_not_raised(tmp_path, http_receiver, capsys):
    from drills.notify import announce_run

    config = _config(tmp_path, "file:///srv/backups", f'webhook_url = "{http_receiver.url}/x"\n')
    found = announce_run({"drills": [None]}, tmp_path, load_config(config, env={}))
    (broken,) = found["notifications"]
    assert broken["ok"] is False
    assert broken["detail"].startswith("AttributeError: ")
    assert "drill: notify FAILED: AttributeError" in capsys.readouterr().err
