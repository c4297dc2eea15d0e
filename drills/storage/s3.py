"""The S3 backup source: any S3-compatible endpoint (AWS, Backblaze B2, MinIO, moto) via boto3.

Opened through `drills.storage.open_storage("s3://bucket/prefix", endpoint_url=...)`. Requests
have bounded connect/read timeouts and are retried in botocore's "standard" mode (throttling,
500/502/503/504 and dropped connections; never 403). Every failure becomes a one-line
`StorageError` naming the object and the cause.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from drills.config.errors import StorageError
from drills.storage.base import ObjectChanged, ObjectExists, ObjectInfo

CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
MAX_ATTEMPTS = 5
MULTIPART_THRESHOLD = 8 * 1024 * 1024
# Parts of one file sent at once; producers upload up to 8 files at once, so the pool holds
# every connection they can open (a smaller pool drops and reopens them, with a warning each).
TRANSFER_CONCURRENCY = 4
POOL_CONNECTIONS = 48
DELETE_BATCH = 1000

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_UNREACHABLE = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


@dataclass(frozen=True)
class Upload:
    """An incomplete multipart upload: created, never completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


class S3Storage:
    """Backups in an S3 bucket, under an optional prefix.

    Example::

        from drills.storage import open_storage

        storage = open_storage("s3://backups/prod", endpoint_url="http://127.0.0.1:9000")
        storage.check()
        with storage.open("database/app_20250115_020000.sql.gz") as stream:
            head = stream.read(2)
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}" + (f"/{self.prefix.rstrip('/')}" if self.prefix else "")
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.sse = sse
        self._credentials = (access_key_id, secret_access_key)
        self._client: Any = None

    def __repr__(self) -> str:
        at = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Storage({self.url}{at})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, across all pages.

        Zero-byte "folder" markers (keys ending in '/') are not objects and are skipped.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix)
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", ()):
                    if obj["Key"].endswith("/"):
                        continue
                    yield ObjectInfo(
                        key=obj["Key"][strip:],
                        size=int(obj["Size"]),
                        modified=obj["LastModified"].astimezone(UTC),
                        storage_class=obj.get("StorageClass"),
                        etag=str(obj.get("ETag", "")).strip('"') or None,
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc) from None

    def folders(self, prefix: str = "") -> list[str]:
        """The common prefixes directly under `prefix` (folder markers give empty ones)."""
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix)
        found = []
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"
            ):
                found += [item["Prefix"][strip:] for item in page.get("CommonPrefixes", ())]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc) from None
        return sorted(found)

    def open(self, key: str) -> BinaryIO:
        """The object's body as botocore's streaming reader (never read into memory here)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, key) from None
        return response["Body"]  # type: ignore[no-any-return]

    def read_bytes(self, key: str) -> bytes:
        """The whole object (for small objects such as manifests)."""
        with self.open(key) as body:
            try:
                return body.read()
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                raise self._error(exc, key) from None

    def exists(self, key: str) -> bool:
        """Whether the object exists (a HEAD request)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._error(exc, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from None
        return True

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a file: one PUT with its Content-MD5 up to 8 MiB, above that boto3's
        managed multipart transfer."""
        try:
            small = os.path.getsize(path) < MULTIPART_THRESHOLD
        except FileNotFoundError:
            raise StorageError(f"{path}: no such file to upload") from None
        if small:
            with open(path, "rb") as source:
                self.put_bytes(key, source.read())
            return
        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=TRANSFER_CONCURRENCY,
        )
        try:
            self.client.upload_file(
                os.fspath(path),
                self.bucket,
                self.prefix + key,
                ExtraArgs=self._extra(),
                Config=config,
            )
        except FileNotFoundError:
            raise StorageError(f"{path}: no such file to upload") from None
        except boto3.exceptions.S3UploadFailedError as exc:
            # boto3 wraps the ClientError without chaining it explicitly; it is the context
            cause = exc.__context__
            if isinstance(cause, botocore.exceptions.ClientError):
                raise self._error(cause, key) from None
            raise StorageError(f"{self._where(key)}: upload failed ({exc})") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, key) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (one PUT)."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, **self._extra(data)
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, key) from None

    def check(self) -> None:
        """Raise StorageError if the endpoint is unreachable, the bucket missing or denied."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc) from None

    def create(self, key: str, data: bytes) -> str:
        """PUT with ``If-None-Match: *``: stored only if no object is there, else ObjectExists.

        The store must honour conditional writes (AWS S3 and MinIO do).
        """
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*",
                **self._extra(data),
            )  # fmt: skip
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _CONDITION_FAILED or _status(exc) in (409, 412):
                raise ObjectExists(f"{self._where(key)}: exists already") from None
            raise self._error(exc, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from None
        return str(response.get("ETag", "")).strip('"')

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The whole object and its ETag."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return response["Body"].read(), str(response.get("ETag", "")).strip('"')
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, key) from None

    def replace(self, key: str, data: bytes, tag: str) -> str:
        """PUT with ``If-Match: <tag>``: ObjectChanged if another writer changed it."""
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfMatch=f'"{tag}"',
                **self._extra(data),
            )  # fmt: skip
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _CONDITION_FAILED | _NOT_FOUND or _status(exc) in (404, 409, 412):
                raise ObjectChanged(f"{self._where(key)}: changed since it was read") from None
            raise self._error(exc, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from None
        return str(response.get("ETag", "")).strip('"')

    def delete(self, key: str, tag: str | None = None) -> None:
        """DELETE the object, with ``If-Match: <tag>`` when given (ObjectChanged if it
        changed); a missing object is not an error."""
        extra = {"IfMatch": f'"{tag}"'} if tag else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND or _status(exc) == 404:
                return
            if _code(exc) in _CONDITION_FAILED or _status(exc) in (409, 412):
                raise ObjectChanged(f"{self._where(key)}: changed since it was read") from None
            raise self._error(exc, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from None

    def delete_all(self, keys: list[str]) -> None:
        """Delete many objects, a thousand per request; StorageError naming the first failure."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            request = {"Objects": [{"Key": self.prefix + k} for k in batch], "Quiet": True}
            try:
                response = self.client.delete_objects(Bucket=self.bucket, Delete=request)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise self._error(exc, batch[0]) from None
            for error in response.get("Errors", ()):
                key = str(error.get("Key", ""))[len(self.prefix) :]
                raise StorageError(
                    f"{self._where(key)}: not deleted ({error.get('Code')}: {error.get('Message')})"
                )

    def list_uploads(self, prefix: str = "") -> list[Upload]:
        """Incomplete multipart uploads whose key starts with `prefix`."""
        found = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Uploads", ()):
                    key = item["Key"][len(self.prefix) :]
                    found.append(Upload(key, item["UploadId"], item["Initiated"].astimezone(UTC)))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, prefix or None) from None
        return found

    def upload_bytes(self, upload: Upload) -> int:
        """How many bytes the parts of an incomplete upload hold (what the store bills)."""
        total = 0
        paginator = self.client.get_paginator("list_parts")
        try:
            pages = paginator.paginate(
                Bucket=self.bucket, Key=self.prefix + upload.key, UploadId=upload.upload_id
            )
            for page in pages:
                total += sum(int(part["Size"]) for part in page.get("Parts", ()))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, upload.key) from None
        return total

    def abort_upload(self, upload: Upload) -> None:
        """Abort an incomplete multipart upload; its parts are freed."""
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.prefix + upload.key, UploadId=upload.upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return
            raise self._error(exc, upload.key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, upload.key) from None

    # -- archive classes: lifecycle rules, restore requests (drills.storage.thaw)

    def bucket_key(self, key: str) -> str:
        """The key in the bucket (with the storage's prefix), as lifecycle filters see it."""
        return self.prefix + key

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as S3 gives them; [] when it has none."""
        try:
            answer = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise self._error(exc) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc) from None
        return list(answer.get("Rules", []))

    def request_restore(self, key: str, tier: str, days: int = 1) -> None:
        """Ask for a temporary copy of an archived object (GLACIER, DEEP_ARCHIVE) for `days`,
        retrieved by `tier`; a restore already in progress is left to finish."""
        request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        try:
            self.client.restore_object(
                Bucket=self.bucket, Key=self.prefix + key, RestoreRequest=request
            )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) != "RestoreAlreadyInProgress":
                raise self._error(exc, key) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, key) from None

    def restore_state(self, key: str) -> str | None:
        """An object's restore as S3 says it (x-amz-restore): None when none was asked for,
        else e.g. 'ongoing-request="true"'."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, key) from None
        return head.get("Restore")

    def _extra(self, data: bytes | None = None) -> dict[str, str]:
        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        if data is not None:
            # A bucket with an Object Lock default retention refuses a PUT without an
            # integrity header; botocore sends none to S3-compatible endpoints (see below).
            extra["ContentMD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        return extra

    def _make_client(self) -> Any:
        access_key_id, secret_access_key = self._credentials
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=self.region,
        )
        options: dict[str, Any] = {}
        if self.endpoint_url:
            # S3-compatible services (MinIO, B2, moto) want path-style addressing, and some
            # reject the CRC32 checksum headers botocore sends by default since 1.36
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            if urllib.parse.urlsplit(self.endpoint_url).hostname in _LOOPBACK:
                options["proxies"] = {}  # loopback never goes through an HTTP proxy
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            max_pool_connections=POOL_CONNECTIONS,
            **options,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _where(self, key: str | None = None) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _error(self, exc: Exception, key: str | None = None) -> StorageError:
        return StorageError(f"{self._prefix_of(exc, key)}: {_cause(exc, key)}")

    def _prefix_of(self, exc: Exception, key: str | None) -> str:
        if isinstance(exc, _UNREACHABLE):
            return f"{self.url} at {self.endpoint_url or self.client.meta.endpoint_url}"
        if isinstance(exc, botocore.exceptions.ClientError) and _code(exc) == "NoSuchBucket":
            return self.url
        return self._where(key)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _cause(exc: Exception, key: str | None) -> str:
    """The one-line cause of a botocore failure."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _code(exc), _status(exc)
        error = exc.response.get("Error", {})
        if code == "InvalidObjectState":
            storage_class = error.get("StorageClass") or "an archive class"
            return (
                f"archived (storage class {storage_class}); restore it from the archive tier first"
            )
        if code == "NoSuchBucket" or (code in _NOT_FOUND and key is None):
            return "no such bucket"
        if code in _NOT_FOUND:
            return "no such object (deleted after listing?)"
        if status == 403 or code in _DENIED:
            label = f"403 {code}" if code and code != "403" else "403"
            return f"access denied ({label}) — check credentials"
        if status is not None and status >= 500:
            return f"storage error (HTTP {status} {code}) after {MAX_ATTEMPTS} attempts"
        message = error.get("Message") or ""
        return f"{code or 'error'} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return f"storage unreachable (no connection within {CONNECT_TIMEOUT} s)"
    if isinstance(exc, botocore.exceptions.ReadTimeoutError):
        return f"no answer within {READ_TIMEOUT} s (read timeout)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        detail = str(exc.kwargs.get("error", "")).lower()
        if "refused" in detail:
            return "storage unreachable (connection refused)"
        if "name or service not known" in detail or "nodename nor servname" in detail:
            return "storage unreachable (host name does not resolve)"
        return "storage unreachable (cannot connect)"
    if isinstance(exc, botocore.exceptions.ConnectionClosedError):
        return "storage unreachable (the connection closed before an answer)"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, botocore.exceptions.ConnectionError):
        return f"storage unreachable ({exc})"
    return f"{type(exc).__name__}: {exc}"
