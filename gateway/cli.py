"""The ``mandate`` command line: a thin layer over the gateway and ledger APIs.

Conventions: results on stdout, messages on stderr; exit 0 success, 1 the checked thing is bad
(a tampered ledger, a failing policy test), 2 unusable input or usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from gateway.settings import Settings
from gateway.storage import open_ledger, signing_key
from ledger.cli import run_verify
from ledger.errors import LedgerError
from ledger.export import write_export

app = typer.Typer(
    help=(
        "Mandate: a policy-as-code gateway for autonomous operations, with a signed ledger "
        "that regulators verify offline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ledger_app = typer.Typer(
    help=(
        "The ledger: export it, verify an export offline, prove inclusion and consistency, "
        "print the public key auditors verify with."
    ),
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")

err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MANDATE_DATA_DIR",
        help="Where the SQLite database and the signing key live [default: ./.mandate].",
        show_default=False,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="MANDATE_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: SQLite in the "
        "data dir].",
        show_default=False,
    ),
]


def settings_from(data_dir: Path | None, database_url: str | None, **more: Any) -> Settings:
    """Settings with the command line's values over the environment and ``mandate.toml``."""
    given = {k: v for k, v in more.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = data_dir
    if database_url is not None:
        given["database_url"] = database_url
    return Settings(**given)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error to stderr and return the exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


token_app = typer.Typer(
    help="Bearer tokens: made here, stored hashed, shown once.", no_args_is_help=True
)
app.add_typer(token_app, name="token")

Policies = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        envvar="MANDATE_POLICIES",
        help="The policy bundle directory [default: ./policies].",
        show_default=False,
    ),
]


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8080].")] = None,
    data_dir: DataDir = None,
    policies: Policies = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Start the gateway: SQLite under ./.mandate and policies from ./policies by default.

    The checkpoint signing key is made on first start (mode 0600).
    """
    import uvicorn

    from gateway.app import create_app
    from gateway.policy.bundle import BundleError, load_bundle

    settings = settings_from(data_dir, database_url, policies=policies, host=host, port=port)
    try:
        bundle = load_bundle(settings.policies)
    except BundleError as exc:
        raise fail(f"{exc}") from None
    url = f"http://{settings.host}:{settings.port}"
    where = settings.database_url or f"SQLite in {settings.data_dir}/"
    err.print(
        f"Mandate gateway on [bold]{url}[/bold]\n"
        f"  ledger: {where}; signing key {settings.key_path}\n"
        f"  policies: {settings.policies}/ (bundle {bundle.digest[:12]}, workflows "
        f"{', '.join(sorted(bundle.workflows))})\n"
        "Next, in another terminal:\n"
        "  .venv/bin/mandate demo                      # a realistic stream of proposals\n"
        "  .venv/bin/mandate token create --name bot --role booking-agent\n"
        f"  open {url}/docs                  # the API, try it out",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )


@app.command()
def demo(
    actions: Annotated[int, typer.Option(help="How many proposals to send.", min=1)] = 200,
    url: Annotated[
        str | None,
        typer.Option(help="A running gateway [default: the local one, or start one here]."),
    ] = None,
    data_dir: DataDir = None,
    policies: Policies = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Send a realistic mix of proposals from both workflows and show what Mandate did.

    Run it from the folder where `make run` runs (it makes tokens in that data dir), then read
    the summary: verdicts by case type, the reasons, latency, and the verified ledger.
    """
    from gateway.demo import run_demo

    settings = settings_from(data_dir, database_url, policies=policies)
    result = run_demo(settings, url=url, actions=actions, console=err)
    raise typer.Exit(0 if result.verified else 1)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A unique name, e.g. booking-bot-1 or alice.")],
    role: Annotated[
        str,
        typer.Option(
            help="An executor role from the Casbin policy (e.g. booking-agent) or one of "
            "approver, governor, auditor, policy-admin."
        ),
    ],
    workflow: Annotated[str | None, typer.Option(help="Bind the token to one workflow.")] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Who owns it (tokens of one owner never approve each other's "
            "proposals) [default: the name]."
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    policies: Policies = None,
) -> None:
    """Make a token and print it (alone, on stdout). It is shown this once; only its hash is
    kept."""
    from gateway.identity import PERSON_ROLES, TokenBook
    from gateway.models import create_gateway_tables
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.permit import Permitter
    from gateway.storage import open_engine

    settings = settings_from(data_dir, database_url, policies=policies)
    try:
        bundle = load_bundle(settings.policies)
    except BundleError as exc:
        raise fail(str(exc)) from None
    executors = Permitter(bundle.casbin_model, bundle.casbin_policy).roles_with_act("propose")
    roles = sorted(executors) + list(PERSON_ROLES)
    if role not in roles:
        raise fail(f"unknown role {role!r}; roles: {', '.join(roles)}")
    if workflow is not None and workflow not in bundle.workflows:
        raise fail(
            f"unknown workflow {workflow!r}; workflows: {', '.join(sorted(bundle.workflows))}"
        )
    engine = open_engine(settings)
    create_gateway_tables(engine)
    try:
        token, identity = TokenBook(engine).create(
            name=name, role=role, workflow=workflow, owner=owner
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.dispose()
    scope = f" in workflow {workflow}" if workflow else ""
    err.print(
        f"token {identity.name} ({identity.token_id}): role {role}{scope}, owner "
        f"{identity.owner}. Store it now; it is not shown again.",
        highlight=False,
    )
    print(token)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token; it stops working within a second."""
    from gateway.identity import TokenBook
    from gateway.models import create_gateway_tables
    from gateway.storage import open_engine

    settings = settings_from(data_dir, database_url)
    engine = open_engine(settings)
    create_gateway_tables(engine)
    try:
        revoked = TokenBook(engine).revoke(name)
    finally:
        engine.dispose()
    if not revoked:
        raise fail(f"no live token named {name!r}", code=1)
    err.print(f"revoked {name}", highlight=False)


@ledger_app.command("public-key")
def public_key(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Print the verifier key line (name+keyid+key) that auditors pass to `ledger verify`.

    The signing key is made (mode 0600) if this data dir has none yet.
    """
    settings = settings_from(data_dir, database_url)
    try:
        print(signing_key(settings).vkey)
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None


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
    settings = settings_from(data_dir, database_url)
    try:
        with open_ledger(settings) as ledger, out.open("wb") as file, _bar("exporting") as bar:
            task = bar.add_task("exporting", total=None)
            checkpoint = write_export(
                ledger,
                file,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (LedgerError, OSError) as exc:
        raise fail(exc.diagnostics() if isinstance(exc, LedgerError) else str(exc)) from None
    sys.stderr.write(f"wrote {checkpoint.size} entries to {out}; closing checkpoint:\n")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Verify an export offline: canonical form, seq, chain, Merkle roots, signatures, keys.

    Exit 0 valid, 1 tampered (the first line names the first bad seq), 2 unusable input.
    Needs no gateway or database: `python -m ledger verify` is the same check.
    """
    code = run_verify(export_file, public_key_file, trusted_checkpoint, as_json=as_json)
    raise typer.Exit(code)


@ledger_app.command("proof")
def proof(
    seq: Annotated[int | None, typer.Option("--seq", help="Inclusion proof of this entry.")] = None,
    size: Annotated[
        int | None, typer.Option("--size", help="...in the tree of this size [default: all].")
    ] = None,
    old: Annotated[
        int | None, typer.Option("--from", help="Consistency proof from this tree size...")
    ] = None,
    new: Annotated[int | None, typer.Option("--to", help="...to this one [default: all].")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print an RFC 9162 inclusion (--seq) or consistency (--from/--to) proof as JSON."""
    if (seq is None) == (old is None):
        raise fail("give --seq N for an inclusion proof or --from A [--to B] for consistency")
    settings = settings_from(data_dir, database_url)
    try:
        with open_ledger(settings) as ledger:
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
        with open_ledger(settings) as ledger:
            sys.stdout.write(ledger.checkpoint().note)
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None


def _bar(description: str) -> Progress:
    return Progress(
        f"[progress.description]{description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
