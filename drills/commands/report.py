"""`drill report`, `drill keygen` and `drill verify-report`: the auditor's side of a run.

- `drill report RUN_DIR` renders drill-report.html again from the run's drill.json (after a
  template change, or for a run made with `[report] html = false`), with the history the
  run carries, else its report directory's; a run directory copied without either renders
  without the history, and says why.
- `drill keygen PATH` makes an Ed25519 key pair: PATH (private, mode 0600) and PATH.pub.
- `drill verify-report RUN_DIR [--public-key PATH]` checks drill.json's signature and the
  sha256 of every file of the run; exit 1 naming each mismatching file. Given an evidence
  bundle (`drill evidence`'s zip), it checks the bundle offline: its manifest's signature,
  every file, every run in it and its chain excerpt (`drills.report.bundle`).

Exit codes: 0 success; 1 the evidence does not verify (or would be broken); 2 usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from drills.config.errors import ConfigError
from drills.report import bundle, evidence
from drills.report.html import REPORT, render, run_history


def register(commands: argparse._SubParsersAction) -> None:
    """Add `drill report`, `drill keygen` and `drill verify-report` to the command's parser."""
    report = commands.add_parser("report", help="render a run's HTML report from its drill.json")
    report.add_argument("run_dir", metavar="RUN_DIR", help="e.g. reports/latest")
    report.add_argument("-o", "--output", default=None, help=f"default: RUN_DIR/{REPORT}")
    report.set_defaults(func=report_main)

    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair to sign evidence")
    keygen.add_argument("path", metavar="PATH", help="private key file (PATH.pub: public key)")
    keygen.set_defaults(func=keygen_main)

    verify = commands.add_parser(
        "verify-report", help="check a run's (or a bundle's) signature and every file's sha256"
    )
    verify.add_argument("run_dir", metavar="RUN_DIR", help="e.g. reports/latest, or bundle.zip")
    verify.add_argument("--public-key", default=None, help="the signer's PATH.pub (recommended)")
    verify.add_argument(
        "--allow-unsigned", action="store_true", help="check the hashes of an unsigned run only"
    )
    verify.set_defaults(func=verify_main)


def report_main(args: argparse.Namespace) -> int:
    """Render the report; never change a file the run's sealed evidence covers."""
    run_dir = _run_dir(args.run_dir)
    document = json.loads((run_dir / evidence.DOCUMENT).read_text())
    history, missing = run_history(run_dir, document)
    if missing:
        print(f"drill: the report is rendered without the history: {missing}")
    html = render(document, history, missing).encode()
    output = Path(args.output) if args.output else run_dir / REPORT
    sealed = _sealed(run_dir, output)
    if sealed is False:
        output.write_bytes(html)
        print(f"drill: wrote {output}")
        return 0
    if sealed == hashlib.sha256(html).hexdigest():
        print(f"drill: {output} is unchanged (it matches the hash drill.json records)")
        return 0
    if missing and sealed and evidence.sha256_file(output) == sealed:
        # The sealed page was drawn with the history this copy lacks; it is intact.
        print(
            f"drill: {output} is the sealed report of this run, intact, with its history; a "
            "rendering without the history is written only with --output"
        )
        return 0
    if missing:
        why = "lacks the history the sealed one was drawn with"
    elif sealed:
        why = "differs from the sealed one (the template changed?)"
    else:
        why = "is not listed"
    print(
        f"drill: {output} is in a sealed run directory and the new rendering {why}; writing it "
        "would make verify-report fail. Write it elsewhere with --output.",
        file=sys.stderr,
    )
    return 1


def keygen_main(args: argparse.Namespace) -> int:
    """Make a key pair and say how to use it."""
    path = Path(args.path)
    public = evidence.keygen(path)
    key = evidence.load_public_key(public)
    print(f"drill: private key {path} (keep it secret, outside the report directory)")
    print(f"drill: public key  {public} (give it to auditors), {evidence.fingerprint(key)}")
    print(f'drill: sign runs with: [report] signing_key_path = "{path.resolve()}"')
    return 0


def verify_main(args: argparse.Namespace) -> int:
    """Verify the run (or the bundle); print every problem; exit 1 if there is any."""
    public_key = Path(args.public_key) if args.public_key else None
    if Path(args.run_dir).is_file():
        return _verify_bundle(Path(args.run_dir), public_key)
    run_dir = _run_dir(args.run_dir)
    problems = evidence.verify_run(run_dir, public_key, allow_unsigned=args.allow_unsigned)
    for problem in problems:
        print(f"drill: {run_dir}/{problem}", file=sys.stderr)
    if problems:
        print(f"drill: FAILED: {len(problems)} problem(s) with the evidence of {run_dir}")
        return 1
    document = json.loads((run_dir / evidence.DOCUMENT).read_text())
    state = document.get("evidence") or {}
    count = len(document.get("artefacts") or {})
    if state.get("signed"):
        whose = "the given key" if public_key else "the key embedded in drill.json"
        fingerprint = state.get("fingerprint")
        print(f"drill: OK: signature valid ({fingerprint}, {whose}); {count} files match")
        if public_key is None:
            print("drill: pass --public-key to prove the signer is who you expect")
    else:
        print(f"drill: OK (UNSIGNED): {count} files match the hashes in drill.json")
    return 0


def _verify_bundle(path: Path, public_key: Path | None) -> int:
    """Check an evidence bundle offline; name every changed file in it."""
    result = bundle.verify(path, public_key)
    for note in result.notes:
        print(f"drill: note: {note}")
    for problem in result.problems:
        print(f"drill: {path}: {problem}", file=sys.stderr)
    if result.problems:
        print(f"drill: FAILED: {len(result.problems)} problem(s) with the bundle {path}")
        return 1
    signer = (result.manifest.get("signer") or {}).get("fingerprint")
    runs = len(result.manifest.get("runs") or [])
    files = len(result.manifest.get("files") or {})
    whose = "the given key" if public_key else "the key embedded in the bundle"
    print(
        f"drill: OK: bundle signed by {signer} ({whose}); {files} files match; {runs} run(s) "
        f"started from {result.manifest.get('since')} to before {result.manifest.get('until')},"
        " each verified, and their chain excerpt whole"
    )
    if public_key is None:
        print("drill: pass --public-key to prove the signer is who you expect")
    return 0


def _run_dir(value: str) -> Path:
    run_dir = Path(value).resolve()
    if not (run_dir / evidence.DOCUMENT).is_file():
        raise ConfigError(f"{value}: no {evidence.DOCUMENT} here; give a run directory")
    return run_dir


def _sealed(run_dir: Path, output: Path) -> str | bool | None:
    """False: free to write; else the sha256 drill.json records for it (None: not listed)."""
    document = json.loads((run_dir / evidence.DOCUMENT).read_text())
    artefacts = document.get("artefacts")
    if artefacts is None or not output.resolve().is_relative_to(run_dir):
        return False
    name = output.resolve().relative_to(run_dir).as_posix()
    return (artefacts.get(name) or {}).get("sha256")
