"""``python -m ledger verify``: the regulator's command, which needs no gateway.

Exit codes: 0 the export is valid; 1 it was tampered with (the first line names the first bad
``seq`` and what is wrong); 2 the input is unusable (missing file, bad key, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ledger.errors import LedgerError, VerificationError
from ledger.verify import (
    MAX_AUTO_WORKERS,
    PARALLEL_MIN_BYTES,
    VerifyResult,
    load_verifier_keys,
    verify_export,
)

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
) -> int:
    """Verify ``export`` against the keys in ``public_key``; print and return the outcome.

    ``out`` and ``err`` default to the ``sys.stdout`` and ``sys.stderr`` of the moment of the
    call, so a caller that swaps them (a test runner, typer's CliRunner) sees the output.
    ``workers``: processes that check the export in parallel (None: by its size; see
    ``verify_export``); the outcome is the same whatever the number.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        keys = load_verifier_keys(public_key)
        kept = trusted_checkpoint.read_text(encoding="utf-8") if trusted_checkpoint else None
        if not export.is_file():
            raise FileNotFoundError(f"no export at {export}")
        with _progress(export, err, enabled=not as_json) as progress:
            result = verify_export(
                export, keys, trusted_checkpoint=kept, progress=progress, workers=workers
            )
    except VerificationError as exc:
        if as_json:
            print(json.dumps({"valid": False, "seq": exc.seq, "problem": exc.problem}), file=out)
        else:
            print(f"TAMPERED: {exc.diagnostics()}", file=out)
        return EXIT_TAMPERED
    except (LedgerError, OSError, UnicodeDecodeError) as exc:
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
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="processes checking the export in parallel (default: 1 for small exports, up to "
        f"{MAX_AUTO_WORKERS} CPUs from {PARALLEL_MIN_BYTES >> 20} MB on); the outcome is the same",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_UNUSABLE if exc.code else EXIT_VALID
    return run_verify(
        args.export,
        args.public_key,
        args.trusted_checkpoint,
        as_json=args.json,
        workers=args.workers,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, got {text!r}")
    return value
