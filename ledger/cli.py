"""``python -m ledger``: the regulator's and the witness's commands, which need no gateway.

``verify`` exit codes: 0 the export is valid; 1 it was tampered with, or too few witnesses
cosigned it (the first line names the first bad ``seq`` and what is wrong); 2 the input is
unusable (missing file, bad key, bad arguments). ``witness``: see ``ledger.witness``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ledger.cosignature import CosignatureVerifier
from ledger.errors import LedgerError, VerificationError
from ledger.keys import generate_witness_key
from ledger.verify import (
    MAX_AUTO_WORKERS,
    PARALLEL_MIN_BYTES,
    VerifyResult,
    load_verifier_keys,
    load_witness_keys,
    verify_export,
)
from ledger.witness import run_witness

__all__ = ["main", "run_verify"]

EXIT_VALID, EXIT_TAMPERED, EXIT_UNUSABLE = 0, 1, 2


def run_verify(
    export: Path,
    public_key: Path,
    trusted_checkpoint: Path | None = None,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    workers: int | None = None,
    witness_keys: Sequence[Path] = (),
    min_witnesses: int | None = None,
) -> int:
    """Verify ``export`` against the keys in ``public_key``; print and return the outcome.

    ``out`` and ``err`` default to the ``sys.stdout`` and ``sys.stderr`` of the moment of the
    call, so a caller that swaps them (a test runner, typer's CliRunner) sees the output.
    ``workers``: processes that check the export in parallel (None: by its size; see
    ``verify_export``); the outcome is the same whatever the number. ``min_witnesses`` of the
    witnesses in the ``witness_keys`` files must have cosigned the closing or the trusted
    checkpoint (default: 1 when witness keys are given, else none).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        keys = load_verifier_keys(public_key)
        witnesses = [w for path in witness_keys for w in load_witness_keys(path)]
        quorum = _quorum(min_witnesses, witnesses)
        kept = trusted_checkpoint.read_text(encoding="utf-8") if trusted_checkpoint else None
        if not export.is_file():
            raise FileNotFoundError(f"no export at {export}")
        with _progress(export, err, enabled=not as_json) as progress:
            result = verify_export(
                export,
                keys,
                trusted_checkpoint=kept,
                witnesses=witnesses,
                min_witnesses=quorum,
                progress=progress,
                workers=workers,
            )
    except VerificationError as exc:
        if as_json:
            print(json.dumps({"valid": False, "seq": exc.seq, "problem": exc.problem}), file=out)
        else:
            print(f"TAMPERED: {exc.diagnostics()}", file=out)
        return EXIT_TAMPERED
    except (LedgerError, OSError, UnicodeDecodeError, ValueError) as exc:
        message = exc.diagnostics() if isinstance(exc, LedgerError) else str(exc)
        if as_json:
            print(json.dumps({"valid": None, "error": message}), file=out)
        else:
            print(f"error: {message}", file=err)
        return EXIT_UNUSABLE
    if as_json:
        print(json.dumps(result.to_json()), file=out)
    else:
        print(_describe(result), file=out)
    return EXIT_VALID


def _quorum(wanted: int | None, witnesses: Sequence[CosignatureVerifier]) -> int:
    distinct = len(set(witnesses))
    if wanted is None:
        return 1 if distinct else 0
    if wanted > distinct:
        raise ValueError(
            f"--min-witnesses {wanted}, but {distinct} distinct witness keys were given "
            "(--witness-key FILE, one per witness)"
        )
    return wanted


def _describe(result: VerifyResult) -> str:
    lines = [
        f"VALID: {result.size} entries, root {result.root.hex()}",
        f"  {result.checkpoints} signed checkpoints; closing checkpoint signed by "
        f"{result.final_key}",
    ]
    if len(result.keys) > 1:
        lines.append(f"  signing keys over time: {', '.join(result.keys)}")
    if result.anchored_at is not None:
        lines.append(
            f"  consistent with your trusted checkpoint of size {result.anchored_at}: nothing "
            "before it was rewritten and nothing was cut"
        )
    else:
        lines.append(
            "  tail unanchored: no trusted checkpoint was given, so this proves the export is "
            "intact as signed, not that it is the whole log. Keep the closing checkpoint and pass "
            "it with --trusted-checkpoint next time."
        )
    if result.witnessed_at is not None:
        which = "closing" if result.witnessed_at == result.size else "trusted"
        lines.append(
            f"  cosigned by {len(result.witnesses)} witness(es) at the {which} checkpoint "
            f"(size {result.witnessed_at}): {', '.join(result.witnesses)}"
        )
    return "\n".join(lines)


@contextmanager
def _progress(path: Path, err: TextIO, *, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on an interactive terminal, where rich is installed; nothing otherwise."""
    if not enabled or not err.isatty():
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    except ImportError:  # the verifier installed alone (mandate-ledger, without [progress])
        yield None
        return

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(file=err),
        transient=True,
    ) as bar:
        task = bar.add_task("verifying", total=path.stat().st_size)
        yield lambda done: bar.update(task, completed=done)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ledger``."""
    parser = argparse.ArgumentParser(
        prog="python -m ledger",
        description="Verify a Mandate ledger export offline, with nothing but its public key.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify a JSON Lines export",
        description=(
            "Checks canonical form, contiguous seq, every prev link, the Merkle root at every "
            "checkpoint, every signature and key range, and (with --trusted-checkpoint) that the "
            "export extends a checkpoint you kept. Exit 0 valid, 1 tampered, 2 unusable input."
        ),
    )
    verify.add_argument("export", type=Path, help="the export file (JSON Lines)")
    verify.add_argument(
        "--public-key",
        type=Path,
        required=True,
        help="file with the verifier key line(s) from `mandate ledger public-key`",
    )
    verify.add_argument(
        "--trusted-checkpoint",
        type=Path,
        help="a signed checkpoint you kept from earlier: proves nothing was rewritten or cut",
    )
    verify.add_argument(
        "--witness-key",
        type=Path,
        action="append",
        default=[],
        metavar="W",
        help="a file with a witness's verifier key line (type 0x04); repeat for each witness",
    )
    verify.add_argument(
        "--min-witnesses",
        type=_whole,
        metavar="N",
        help="how many of those witnesses must have cosigned the closing checkpoint, or the "
        "trusted one (default: 1 when --witness-key is given)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="processes checking the export in parallel (default: 1 for small exports, up to "
        f"{MAX_AUTO_WORKERS} CPUs from {PARALLEL_MIN_BYTES >> 20} MB on); the outcome is the same",
    )
    _add_witness(commands)
    try:
        args = parser.parse_args(argv)
        if args.command == "witness" and args.action is None:
            missing = [f"--{n}" for n in ("url", "log-key", "key", "state") if not _given(args, n)]
            if missing:
                commands.choices["witness"].error(
                    f"the arguments {', '.join(missing)} are required"
                )
    except SystemExit as exc:
        return EXIT_UNUSABLE if exc.code else EXIT_VALID
    if args.command == "witness":
        if args.action == "keygen":
            return _keygen(args.name, args.out)
        return run_witness(
            args.url,
            args.log_key,
            args.key,
            args.state,
            once=args.once,
            interval=args.interval,
            token=os.environ.get("MANDATE_TOKEN") or None,
            out=sys.stdout,
            err=sys.stderr,
        )
    return run_verify(
        args.export,
        args.public_key,
        args.trusted_checkpoint,
        as_json=args.json,
        workers=args.workers,
        witness_keys=args.witness_key,
        min_witnesses=args.min_witnesses,
    )


def _add_witness(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    witness = commands.add_parser(
        "witness",
        help="cosign a gateway's checkpoints, each only if it extends the last one cosigned",
        description=(
            "Fetches the latest checkpoint, checks the log's signature and a consistency proof "
            "from the last checkpoint this witness cosigned (kept in --state), and only then "
            "cosigns it and posts the cosignature. The token comes from MANDATE_TOKEN. Exit 0 "
            "cosigned or nothing new; 1 refused (rolled back, forked, badly signed); 2 unusable "
            "input; 3 the gateway could not be reached or failed. `witness keygen` makes a key."
        ),
    )
    witness.add_argument("--url", help="the gateway, e.g. https://mandate.example")
    witness.add_argument("--log-key", type=Path, help="file with the log's verifier key line(s)")
    witness.add_argument("--key", type=Path, help="this witness's private key file (keygen)")
    witness.add_argument(
        "--state", type=Path, help="where the last cosigned checkpoint is kept (created)"
    )
    witness.add_argument("--once", action="store_true", help="one round, then exit")
    witness.add_argument(
        "--interval",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="seconds between rounds without --once [default: 60]",
    )
    actions = witness.add_subparsers(dest="action", metavar="keygen")
    keygen = actions.add_parser(
        "keygen",
        help="make a witness key",
        description="Writes a new witness private key (mode 0600, never overwriting a file) "
        "and prints its verifier key line, alone, on stdout: give that line to verifiers.",
    )
    keygen.add_argument("name", help="the witness's name, e.g. witness.example.org/w1")
    keygen.add_argument("--out", type=Path, required=True, help="the private key file to write")


def _given(args: argparse.Namespace, option: str) -> bool:
    return getattr(args, option.replace("-", "_")) is not None


def _keygen(name: str, path: Path) -> int:
    try:
        cosigner = generate_witness_key(path, name)
    except LedgerError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(cosigner.vkey)
    return EXIT_VALID


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, got {text!r}")
    return value


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"want a number of seconds above 0, got {text!r}")
    return value
