"""The e-mail channel: the message over SMTP, the run's report attached.

Credentials come from the environment variables `[notify]` names, never from the file; the
connection is upgraded with STARTTLS first unless `smtp_starttls = false`.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage

from drills.config.schema import NotifySettings
from drills.notify.message import Message
from drills.notify.webhook import ChannelError


def send_mail(
    settings: NotifySettings,
    message: Message,
    timeout: float,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Send `message` to `[notify] smtp_to`; return to whom it went, or raise ChannelError."""
    environ = os.environ if environ is None else environ
    mail = EmailMessage()
    mail["Subject"] = message.subject
    mail["From"] = settings.smtp_from
    mail["To"] = ", ".join(settings.smtp_to)
    mail["X-Drill-Verdict"] = "pass" if message.passed else "fail"
    mail.set_content(message.text + "\n")
    if message.report is not None:
        # Byte for byte (base64), so the attachment's sha256 is the one the run's evidence
        # seals; the charset is said, as the report is UTF-8 (×, –).
        html = message.report.suffix == ".html"
        mail.add_attachment(
            message.report.read_bytes(),
            "text" if html else "application",
            "html" if html else "json",
            filename=message.report.name,
            params={"charset": "utf-8"} if html else {},
        )
    where = f"SMTP {settings.smtp_host}:{settings.smtp_port}"
    credentials = _credentials(settings, environ, where)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if credentials:
                smtp.login(*credentials)
            refused = smtp.send_message(mail)
    except smtplib.SMTPException as exc:
        raise ChannelError(f"{where}: {_smtp_reason(exc)}") from None
    except (TimeoutError, OSError) as exc:
        why = "no answer in time" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ChannelError(f"{where}: {why}") from None
    delivered = [a for a in settings.smtp_to if a not in refused]
    if refused:
        raise ChannelError(f"{where}: refused {', '.join(refused)} (sent to {len(delivered)})")
    return f"sent to {', '.join(delivered)}"


def _credentials(
    settings: NotifySettings, environ: Mapping[str, str], where: str
) -> tuple[str, str] | None:
    names = (settings.smtp_username_env, settings.smtp_password_env)
    if not any(names):
        return None
    missing = [name for name in names if not name or not environ.get(name)]
    if missing:
        missing_names = ", ".join(name or "(unset)" for name in missing)
        raise ChannelError(
            f"{where}: credentials incomplete: smtp_username_env and smtp_password_env must "
            f"both name set variables (missing: {missing_names})"
        )
    return environ[names[0]], environ[names[1]]


def _smtp_reason(exc: smtplib.SMTPException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        return f"{exc.smtp_code} {text}".strip()
    return str(exc) or type(exc).__name__
