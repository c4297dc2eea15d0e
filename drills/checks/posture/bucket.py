"""The bucket checks: versioning, Object Lock, default encryption, public access, TLS only,
lifecycle; each judged from what the bucket answered (`drills.storage.posture.read_bucket`)."""

from __future__ import annotations

import json
import re
from typing import Any

from drills.checks.posture.finding import Finding
from drills.config import Config
from drills.config.clock import human
from drills.config.schema import DAY, PostureSettings
from drills.storage import Storage
from drills.storage.posture import BucketFacts
from drills.storage.s3 import S3Storage

PUBLIC_ACCESS_FLAGS = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)
# The kinds of backup each drill section stores, and the key of its prefix.
SECTION_PREFIXES = {
    "database": ("database",),
    "files": ("files",),
    "config": ("config",),
    "pitr": ("wal", "base"),
}


def promised_retention_s(config: Config) -> float:
    """How long the estate promises to keep a backup: `[drill] retention_days`, else
    `[backup] retention_days` (the oldest promised restore point is that old)."""
    return config.promised_days() * DAY


def lock_window_s(config: Config) -> float:
    """The RPO window Object Lock must cover: the longest RPO of the kinds stored (all three
    when no kind is configured), so that the newest backup of each is always locked."""
    rpo = config.targets.rpo
    kinds = [k for k in ("database", "files", "config") if getattr(config, k) is not None]
    if config.pitr is not None:
        kinds.append("database")
    return max(getattr(rpo, k) for k in kinds or ("database", "files", "config"))


def backup_prefixes(storage: S3Storage, config: Config) -> list[str]:
    """The key prefixes in the bucket backups are stored under (all kinds when none is
    configured)."""
    prefixes = config.storage.prefixes
    sections = [s for s in SECTION_PREFIXES if getattr(config, s) is not None]
    keys = [k for s in sections or SECTION_PREFIXES for k in SECTION_PREFIXES[s]]
    return [storage.prefix + getattr(prefixes, k) for k in keys]


def bucket_finding(
    name: str, facts: BucketFacts | None, storage: Storage, config: Config
) -> Finding:
    """The finding of one bucket check; `facts` None: the storage is no bucket."""
    if facts is None:
        return Finding(
            name,
            False,
            f"{storage.url} is a local directory, not a bucket: there is no such setting to check",
            "list this check only for an s3:// storage ([posture] required/informative)",
        )
    key = "policy" if name == "tls_only" else name
    if key in facts.errors:
        return Finding(name, False, f"could not be read: {facts.errors[key]}", _READ_FIX)
    assert isinstance(storage, S3Storage)
    judge = _BUCKET_JUDGES[name]
    return judge(facts, facts.answers.get(key), storage, config)


_READ_FIX = (
    "let the drill's credentials read the bucket's settings (s3:GetBucketVersioning, "
    "s3:GetBucketObjectLockConfiguration, s3:GetEncryptionConfiguration, "
    "s3:GetBucketPublicAccessBlock, s3:GetBucketPolicy, s3:GetLifecycleConfiguration), or use "
    "a store that has the setting"
)


def _versioning(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    status = (answer or {}).get("Status") or "never enabled"
    mfa = (answer or {}).get("MFADelete")
    evidence = f"versioning status: {status}" + (f", MFA delete: {mfa}" if mfa else "")
    fix = (
        f"aws s3api put-bucket-versioning --bucket {facts.bucket} --versioning-configuration "
        "Status=Enabled (console: the bucket's Properties, Bucket Versioning, Enable)"
    )
    return Finding("versioning", status == "Enabled", evidence, fix)


def _object_lock(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    window = lock_window_s(config)
    settings = config.posture or PostureSettings()
    days = max(1, -(-int(window) // int(DAY)))
    fix = (
        f"aws s3api put-object-lock-configuration --bucket {facts.bucket} "
        '--object-lock-configuration \'{"ObjectLockEnabled":"Enabled","Rule":{'
        f'"DefaultRetention":{{"Mode":"COMPLIANCE","Days":{days}}}}}}}\' (versioning must be on; '
        "console: the bucket's Properties, Object Lock, Edit, default retention)"
    )
    if not answer or answer.get("ObjectLockEnabled") != "Enabled":
        return Finding("object_lock", False, "Object Lock is not enabled on the bucket", fix)
    retention = (answer.get("Rule") or {}).get("DefaultRetention")
    if not retention:
        return Finding(
            "object_lock",
            False,
            "Object Lock is enabled with no default retention: "
            "new backups are not locked unless each upload asks",
            fix,
        )
    mode = retention.get("Mode")
    period = (retention.get("Days") or 0) * DAY + (retention.get("Years") or 0) * 365 * DAY
    count, unit = (
        (retention["Years"], "year") if retention.get("Years") else (retention.get("Days"), "day")
    )
    length = f"{count} {unit}{'' if count == 1 else 's'}"
    evidence = (
        f"Object Lock enabled, default retention {mode} {length}; the RPO window to cover "
        f"is {human(window)} (the longest RPO target of the kinds stored)"
    )
    if period < window:
        return Finding(
            "object_lock",
            False,
            evidence + ": a backup is unlocked before the next one is due",
            fix,
        )
    if mode != "COMPLIANCE" and not settings.accept_governance:
        return Finding(
            "object_lock",
            False,
            evidence + f": {mode} mode can be bypassed by a "
            "user allowed s3:BypassGovernanceRetention (stolen credentials can delete "
            "the backups); COMPLIANCE cannot, or accept it with [posture] "
            "accept_governance = true",
            fix,
        )
    return Finding("object_lock", True, evidence)


def _encryption(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    algorithms = [
        (rule.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm")
        for rule in answer or []
    ]
    algorithms = [a for a in algorithms if a]
    fix = (
        f"aws s3api put-bucket-encryption --bucket {facts.bucket} "
        '--server-side-encryption-configuration \'{"Rules":[{"ApplyServerSideEncryptionByDefault'
        '":{"SSEAlgorithm":"aws:kms"}}]}\' (or AES256; console: the bucket\'s Properties, '
        "Default encryption)"
    )
    if algorithms:
        keys = [
            (rule.get("ApplyServerSideEncryptionByDefault") or {}).get("KMSMasterKeyID")
            for rule in answer
        ]
        named = [k for k in keys if k]
        evidence = "default encryption: " + ", ".join(algorithms)
        if named:
            evidence += f" (key {', '.join(named)})"
        return Finding("encryption", True, evidence)
    sse = config.storage.sse
    also = f"; [storage] sse = {sse} asks for it on the producers' own uploads only" if sse else ""
    return Finding("encryption", False, f"no default encryption on the bucket{also}", fix)


def _public_access(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    fix = (
        f"aws s3api put-public-access-block --bucket {facts.bucket} "
        "--public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,"
        "BlockPublicPolicy=true,RestrictPublicBuckets=true (console: the bucket's Permissions, "
        "Block public access, Block all public access)"
    )
    if not answer:
        return Finding("public_access", False, "no public access block on the bucket", fix)
    flags = ", ".join(f"{f}={str(bool(answer.get(f))).lower()}" for f in PUBLIC_ACCESS_FLAGS)
    passed = all(answer.get(flag) is True for flag in PUBLIC_ACCESS_FLAGS)
    return Finding("public_access", passed, f"public access block: {flags}", fix)


def tls_statement(bucket: str) -> dict[str, Any]:
    """The policy statement that refuses every request to `bucket` not made over TLS."""
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _tls_only(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    bucket = facts.bucket
    statement = tls_statement(bucket)
    fix = (
        f"add this statement to the bucket's policy (aws s3api put-bucket-policy --bucket "
        f"{bucket} --policy ... replaces the whole policy; console: the bucket's Permissions, "
        f"Bucket policy): {json.dumps(statement, separators=(',', ':'))}"
    )
    if not answer:
        evidence = "no bucket policy: plain HTTP requests are not refused"
        return Finding("tls_only", False, evidence, fix)
    try:
        policy = json.loads(answer)
    except ValueError:
        return Finding("tls_only", False, "the bucket policy is not JSON", fix)
    statements = policy.get("Statement") or []
    statements = [statements] if isinstance(statements, dict) else statements
    for number, found in enumerate(statements, start=1):
        if _refuses_plain_http(found, bucket):
            sid = found.get("Sid") or f"statement {number}"
            return Finding(
                "tls_only",
                True,
                f"the policy's {sid} denies every action to everyone "
                f"on {bucket} and its objects when aws:SecureTransport is false",
            )
    return Finding(
        "tls_only",
        False,
        f"none of the policy's {len(statements)} statements denies "
        "all access to the bucket and its objects when aws:SecureTransport is false",
        fix,
    )


def _refuses_plain_http(statement: Any, bucket: str) -> bool:
    """Whether one policy statement is a Deny of everything, to everyone, on the bucket and
    every object, when the request is not over TLS."""
    if not isinstance(statement, dict) or statement.get("Effect") != "Deny":
        return False
    if {"NotPrincipal", "NotAction", "NotResource"} & set(statement):
        return False  # an exception carved out of the deny: not a refusal of all plain HTTP
    principal = statement.get("Principal")
    everyone = isinstance(principal, dict) and _listed(principal.get("AWS")) == ["*"]
    if principal != "*" and not everyone:
        return False
    if not any(a in ("*", "s3:*") for a in _listed(statement.get("Action"))):
        return False
    resources = _listed(statement.get("Resource"))
    for target in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"):
        if not any(_matches(pattern, target) for pattern in resources):
            return False
    return _insecure_transport(statement.get("Condition") or {})


def _insecure_transport(condition: Any) -> bool:
    if not isinstance(condition, dict):
        return False
    for operator, clauses in condition.items():
        if operator.lower() not in ("bool", "boolifexists") or not isinstance(clauses, dict):
            continue
        for key, value in clauses.items():
            values = [str(v).lower() for v in _listed(value)]
            if key.lower() == "aws:securetransport" and values == ["false"]:
                return True
    return False


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _matches(pattern: str, arn: str) -> bool:
    # ARNs of other partitions (aws-cn, aws-us-gov) name the same bucket.
    pattern = re.sub(r"^arn:aws[a-z-]*:", "arn:aws:", str(pattern))
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, arn) is not None


def _lifecycle(facts: BucketFacts, answer: Any, storage: S3Storage, config: Config) -> Finding:
    promise = promised_retention_s(config)
    prefixes = backup_prefixes(storage, config)
    rules = [r for r in answer or [] if r.get("Status") == "Enabled"]
    fix_rule = (
        f"raise its Expiration to at least {config.backup.retention_days} days (aws s3api "
        f"put-bucket-lifecycle-configuration --bucket {facts.bucket} ...; console: the bucket's "
        "Management, Lifecycle rules), or lower the promise, [backup] retention_days"
    )
    if not rules:
        return Finding(
            "lifecycle",
            True,
            f"no enabled lifecycle rule: nothing under "
            f"{', '.join(prefixes)} expires by lifecycle (kept until pruned; the "
            f"promise is {human(promise)})",
        )
    early, shown = [], []
    for rule in rules:
        scope = _rule_prefix(rule)
        covered = [p for p in prefixes if p.startswith(scope) or scope.startswith(p)]
        if not covered:
            continue
        name = rule.get("ID") or "(unnamed rule)"
        shown.append(f"{name} on {scope or 'the whole bucket'}: {_rule_words(rule)}")
        expiration = rule.get("Expiration") or {}
        if "Date" in expiration:
            early.append(
                f"rule {name} expires every object under {scope or 'the bucket'} on "
                f"{expiration['Date']}, whatever its age"
            )
        elif expiration.get("Days") is not None and expiration["Days"] * DAY < promise:
            early.append(
                f"rule {name} expires {', '.join(covered)} after {expiration['Days']} "
                f"days, before the oldest promised restore point "
                f"({config.backup.retention_days} days)"
            )
    evidence = "; ".join(shown) or f"no enabled rule applies to {', '.join(prefixes)}"
    if early:
        return Finding(
            "lifecycle",
            False,
            "; ".join(early) + f" (rules: {evidence})",
            "for each such rule, " + fix_rule,
        )
    return Finding("lifecycle", True, f"{evidence}; the promise is {human(promise)}")


def _rule_prefix(rule: dict[str, Any]) -> str:
    found = rule.get("Filter")
    if isinstance(found, dict):
        if "Prefix" in found:
            return str(found["Prefix"])
        if isinstance(found.get("And"), dict):
            return str(found["And"].get("Prefix") or "")
        return ""  # a tag or size filter: it may reach any backup
    return str(rule.get("Prefix") or "")


def _rule_words(rule: dict[str, Any]) -> str:
    words = [
        f"{t.get('StorageClass')} after {t.get('Days', t.get('Date'))} days"
        for t in rule.get("Transitions") or []
    ]
    expiration = rule.get("Expiration") or {}
    if "Days" in expiration:
        words.append(f"expire after {expiration['Days']} days")
    elif "Date" in expiration:
        words.append(f"expire on {expiration['Date']}")
    noncurrent = rule.get("NoncurrentVersionExpiration") or {}
    if "NoncurrentDays" in noncurrent:
        words.append(f"old versions expire {noncurrent['NoncurrentDays']} days after replacement")
    return ", ".join(words) or "no transition or expiration"


_BUCKET_JUDGES = {
    "versioning": _versioning,
    "object_lock": _object_lock,
    "encryption": _encryption,
    "public_access": _public_access,
    "tls_only": _tls_only,
    "lifecycle": _lifecycle,
}
