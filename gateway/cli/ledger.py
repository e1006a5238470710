"""``mandate ledger``: export the ledger, verify an export offline, prove inclusion and
consistency, sign a checkpoint, print the public keys auditors verify with, rotate the signing
key, erase a data subject's personal data. None of them makes a ledger (``gateway.cli.local``);
only ``rotate-key`` makes a key, the ledger's next one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.console import err, fail, show_progress
from gateway.cli.local import (
    DatabaseUrl,
    DataDir,
    check_data_dir,
    open_existing_ledger,
    settings_from,
)
from gateway.settings import Settings
from gateway.wording import counted
from ledger.errors import LedgerError

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    help=(
        "The ledger: export it, verify an export offline, prove inclusion and consistency, "
        "print the public keys auditors verify with, rotate the signing key, erase a data "
        "subject's personal data."
    ),
    no_args_is_help=True,
)


@ledger_app.command("public-key")
def public_key(
    every_key: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Print every key the ledger has had, oldest first, one verifier line each (the "
            "range each signs goes to stderr); read from the database, not the key file.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print the verifier key line (name+keyid+key) that auditors pass to `ledger verify`.

    Reads the gateway's signing key; where there is none, says so and exits 2 (`mandate serve`
    makes it on its first start). With `--all`, the keys of the ledger's `key` entries: the
    first line is the key the log began with, which `ledger verify --public-key` trusts; it
    learns the later ones from the hand-overs each predecessor signed.
    """
    from gateway.db.connect import signing_key

    settings = settings_from(data_dir, database_url)
    if every_key:
        _print_every_key(settings)
        return
    if settings.signing_key is None:
        check_data_dir(settings)
    try:
        print(signing_key(settings, create=False).vkey)
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None


def _print_every_key(settings: Settings) -> None:
    try:
        with open_existing_ledger(settings, sign=False) as ledger:
            keys = ledger.keys()
            size = ledger.size()
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None
    for index, (from_size, vkey) in enumerate(keys):
        if index + 1 < len(keys):
            upto = f"to size {keys[index + 1][0] - 1}"
        else:
            upto = f"on (current; the log holds {size} entries)"
        err.print(f"key {index + 1}: signs tree sizes from {from_size} {upto}", highlight=False)
        print(vkey)


@ledger_app.command("rotate-key")
def rotate_key(
    new_key: Annotated[
        Path | None,
        typer.Option(
            "--new-key",
            help="An Ed25519 private key (PEM, mode 0600) to rotate to, made elsewhere; it is "
            "copied to the signing key's place. Default: a new key is made there.",
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Hand the ledger over to a new signing key, and print its verifier line on stdout.

    A `key` entry names the new key and the first tree size it signs, and the old key signs the
    hand-over checkpoint, so a verifier that trusts the old key learns the new one. Running
    gateways on this database take the new key up at their next checkpoint, without a restart.
    The old key file is kept as `<key>.retired-<key id>`: move it offline once nothing needs it.
    Give auditors `mandate ledger public-key --all`.
    """
    from gateway.db.connect import rotate_signing_key

    settings = settings_from(data_dir, database_url)
    try:
        with open_existing_ledger(settings) as ledger:
            new, handover = rotate_signing_key(settings, ledger, new_key)
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None
    except OSError as exc:
        raise fail(f"{exc.filename or settings.key_path}: {exc.strerror or exc}") from None
    if handover is None:
        err.print(
            f"the ledger already signs with {new.vkey}; its key file is now in place at "
            f"{settings.key_path}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err.print(
            f"rotated: the old key signed the hand-over checkpoint of size {handover.size}; "
            f"the new key signs from size {handover.size + 1} on and is at {settings.key_path}",
            highlight=False,
            soft_wrap=True,
        )
    print(new.vkey)


@ledger_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (JSON Lines).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Export the whole ledger as JSON Lines, ending with a checkpoint that covers it all.

    Give the file to an auditor with the output of `mandate ledger public-key`; they run
    `mandate ledger verify FILE --public-key KEYFILE` (or `python -m ledger verify`).
    """
    from ledger.export import write_export

    settings = settings_from(data_dir, database_url)
    try:
        with (
            open_existing_ledger(settings) as ledger,
            out.open("wb") as file,
            show_progress("exporting") as bar,
        ):
            task = bar.add_task("exporting", total=None)
            checkpoint = write_export(
                ledger,
                file,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (LedgerError, OSError) as exc:
        raise fail(exc.diagnostics() if isinstance(exc, LedgerError) else str(exc)) from None
    sys.stderr.write(
        f"wrote {counted(checkpoint.size, 'entry', 'entries')} to {out}; closing checkpoint:\n"
    )
    sys.stderr.write(checkpoint.note)


@ledger_app.command("verify")
def verify(
    export_file: Annotated[Path, typer.Argument(metavar="FILE", help="The export to verify.")],
    public_key_file: Annotated[
        Path,
        typer.Option("--public-key", help="File with the verifier key line(s) to trust."),
    ],
    trusted_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--trusted-checkpoint",
            help="A checkpoint you kept earlier: proves nothing before it was rewritten or cut.",
        ),
    ] = None,
    witness_keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--witness-key",
            metavar="W",
            help="A file with a witness's verifier key line; repeat it for each witness.",
        ),
    ] = None,
    min_witnesses: Annotated[
        int | None,
        typer.Option(
            "--min-witnesses",
            min=0,
            metavar="N",
            help="How many of those witnesses must have cosigned the closing checkpoint, or the "
            "trusted one (default: 1 when --witness-key is given, else none).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Verify an export offline: form, seq, chain, roots, signatures, keys and witnesses.

    With --witness-key, the witnesses' cosignatures are required too.

    Exit 0 valid, 1 tampered or too few witnesses (the first line names the first bad seq), 2
    unusable input. Needs no gateway or database: `python -m ledger verify` is the same check.
    """
    from ledger.cli import run_verify

    code = run_verify(
        export_file,
        public_key_file,
        trusted_checkpoint,
        as_json=as_json,
        witness_keys=witness_keys or (),
        min_witnesses=min_witnesses,
    )
    raise typer.Exit(code)


@ledger_app.command("proof")
def proof(
    seq: Annotated[int | None, typer.Option("--seq", help="Inclusion proof of this entry.")] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", help="With --seq: in the tree of this size.", show_default="the whole ledger"
        ),
    ] = None,
    old: Annotated[
        int | None, typer.Option("--from", help="Consistency proof from this tree size (see --to).")
    ] = None,
    new: Annotated[
        int | None,
        typer.Option(
            "--to", help="With --from: to this tree size.", show_default="the whole ledger"
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print an RFC 9162 inclusion (--seq) or consistency (--from/--to) proof as JSON."""
    if (seq is None) == (old is None):
        raise fail("give --seq N for an inclusion proof or --from A [--to B] for consistency")
    settings = settings_from(data_dir, database_url)
    try:
        with open_existing_ledger(settings, sign=False) as ledger:
            if seq is not None:
                tree = size if size is not None else ledger.size()
                hashes = ledger.inclusion_proof(seq, tree)
                result: dict[str, Any] = {
                    "type": "inclusion",
                    "seq": seq,
                    "tree_size": tree,
                    "leaf_hash": ledger.leaf_hash(seq).hex(),
                    "root_hash": ledger.root(tree).hex(),
                    "proof": [h.hex() for h in hashes],
                }
            else:
                assert old is not None
                tree = new if new is not None else ledger.size()
                hashes = ledger.consistency_proof(old, tree)
                result = {
                    "type": "consistency",
                    "size1": old,
                    "size2": tree,
                    "root1": ledger.root(old).hex(),
                    "root2": ledger.root(tree).hex(),
                    "proof": [h.hex() for h in hashes],
                }
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None
    print(json.dumps(result, indent=2))


@ledger_app.command("checkpoint")
def checkpoint(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Sign a checkpoint of the whole ledger now and print it (keep it: it anchors verifies)."""
    settings = settings_from(data_dir, database_url)
    try:
        with open_existing_ledger(settings) as ledger:
            sys.stdout.write(ledger.checkpoint().note)
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None


@ledger_app.command("erase")
def erase(
    data_subject: Annotated[
        str,
        typer.Option(
            "--data-subject",
            help="The data subject's id, as proposals gave it in the field the bundle names "
            "(e.g. the customer number in params.customer).",
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="Why: the request's reference (recorded; it must not name the subject).",
        ),
    ],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Erase every sealed value of a data subject (GDPR art. 17); the ledger still verifies.

    Appends an `erasure` entry that lists the fields erased and names the subject only by its
    keyed digest. Needs the gateway's signing key and subject key. Prints the entry's seq on
    stdout (nothing when nothing of the subject was left to erase).
    """
    import getpass
    import socket

    from gateway.decision.erasure import erase_subject
    from gateway.errors import GatewayError

    settings = settings_from(data_dir, database_url)
    with open_existing_ledger(settings, erase=True) as ledger:
        try:
            done = erase_subject(
                ledger,
                data_subject,
                actor=f"{getpass.getuser()}@{socket.gethostname()}"[:120],
                reason=reason,
            )
        except GatewayError as exc:
            raise fail(exc.detail) from None
    if done.erasure_seq is None:
        err.print(
            "nothing sealed for that data subject is left to erase (never recorded, or erased "
            f"before); the ledger names it {done.subject_digest}",
            highlight=False,
        )
        return
    err.print(
        f"erased {counted(len(done.erased), 'value')} of {counted(len(done.actions), 'action')} "
        f"({', '.join(done.actions)}) in erasure entry {done.erasure_seq}; the ledger names "
        f"the subject {done.subject_digest}",
        highlight=False,
        soft_wrap=True,
    )
    print(done.erasure_seq)
