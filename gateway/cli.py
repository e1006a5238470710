"""The ``mandate`` command line: a thin layer over the gateway and ledger APIs.

Conventions: results on stdout, messages on stderr; exit 0 success, 1 the checked thing is bad
(a tampered ledger, a failing policy test), 2 unusable input or usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from gateway.settings import Settings
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy.engine import Engine

    from gateway.client import MandateClient
    from gateway.schemas import AutonomyDetail

# Commands import what they use when they run: `mandate --help` and the HTTP commands should
# not pay for SQLAlchemy, FastAPI and the policy engines.

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
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def open_database(settings: Settings) -> Engine:
    """The database of ``settings``, its schema brought to head as a starting gateway would
    (or refused, exit 2, when it cannot be: ``auto_migrate=false``, a newer revision)."""
    from gateway.migrations import SchemaError, ensure_schema
    from gateway.storage import open_engine

    engine = open_engine(settings)
    try:
        ensure_schema(engine, auto_migrate=settings.auto_migrate)
    except SchemaError as exc:
        engine.dispose()
        raise fail(str(exc)) from None
    return engine


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
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes serving on the one port; they share the database and the "
            "ledger as separate gateway processes do.",
            min=1,
        ),
    ] = 1,
) -> None:
    """Start the gateway: SQLite under ./.mandate and policies from ./policies by default.

    The checkpoint signing key is made on first start (mode 0600).
    """
    import os

    import uvicorn

    from gateway.app import create_app
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.serving import WORKER_FACTORY, export_settings
    from gateway.storage import signing_key

    settings = settings_from(data_dir, database_url, policies=policies, host=host, port=port)
    try:
        bundle = load_bundle(settings.policies)
    except BundleError as exc:
        raise fail(f"{exc}") from None
    # What would stop the gateway from becoming ready is said here, plainly, before the banner
    # (the app checks again when it starts: another process may change things meanwhile).
    try:
        signing_key(settings)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"signing key {settings.key_path}: {exc.strerror or exc}") from None
    open_database(settings).dispose()
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
    if workers > 1:
        # Each worker is a new interpreter: it imports the app factory (uvicorn takes an
        # import string to start more than one) and reads its settings from the environment
        # it inherits. The workers start at once, as separate gateway processes may: what a
        # first start makes (schema, signing key, secrets, the bundle's activation) is made
        # once, whoever comes first.
        export_settings(settings, os.environ)
    uvicorn.run(
        create_app(settings) if workers == 1 else WORKER_FACTORY,
        factory=workers > 1,
        workers=workers,
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
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.permit import Permitter

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
    engine = open_database(settings)
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

    settings = settings_from(data_dir, database_url)
    engine = open_database(settings)
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
    from gateway.storage import signing_key

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
    from gateway.storage import open_ledger
    from ledger.export import write_export

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
    from ledger.cli import run_verify

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
    from gateway.storage import open_ledger

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
    from gateway.storage import open_ledger

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


# -- approvals and actions: over HTTP, through the SDK, against a running gateway -------------
# These touch no local state (so no --data-dir): they talk to the gateway at --url with the
# caller's token, as any approver would. Exit 1 when the approval or action is in a state that
# refuses the request (409: already decided, expired, superseded, or re-evaluated after a policy
# change); exit 2 when the command cannot be carried out as given (bad token, no such id, a
# missing reason, an unreachable gateway).

approvals_app = typer.Typer(
    help=(
        "Held actions waiting for people: list them, approve or reject them. Talks to a "
        "running gateway (--url) with an approver's token (--token or MANDATE_TOKEN)."
    ),
    no_args_is_help=True,
)
app.add_typer(approvals_app, name="approvals")
actions_app = typer.Typer(
    help="Proposed actions: where one stands, with its ledger timeline (over HTTP).",
    no_args_is_help=True,
)
app.add_typer(actions_app, name="actions")

GatewayUrl = Annotated[
    str,
    typer.Option(
        "--url", envvar="MANDATE_URL", help="The running gateway to talk to.", show_envvar=True
    ),
]
GatewayToken = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="MANDATE_TOKEN",
        help="Your bearer token (from `mandate token create`). Prefer the environment "
        "variable: other users can read command lines in the process list.",
        show_default=False,
        show_envvar=True,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the gateway's JSON answer instead of text.")
]
DEFAULT_URL = "http://127.0.0.1:8080"

mcp_app = typer.Typer(
    help="Mandate in front of MCP servers: every tool call an agent makes is proposed first.",
    no_args_is_help=True,
)
app.add_typer(mcp_app, name="mcp")


@mcp_app.command("proxy")
def mcp_proxy(
    workflow: Annotated[str, typer.Option(help="The workflow the tool calls are proposed in.")],
    upstream: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- UPSTREAM_COMMAND [ARGS...]",
            help="The upstream MCP server to launch over stdio (or use --upstream-url).",
            show_default=False,
        ),
    ] = None,
    url: GatewayUrl = DEFAULT_URL,
    on_hold: Annotated[
        Literal["wait", "return"],
        typer.Option(
            help="A held call waits for the approval (sending progress), or returns at once "
            "naming it and is made if approved while the proxy runs."
        ),
    ] = "wait",
    hold_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a held call waits before it is withdrawn.")
    ] = 300.0,
    upstream_url: Annotated[
        str | None,
        typer.Option(help="A remote upstream MCP server (streamable HTTP) instead of a command."),
    ] = None,
) -> None:
    """An MCP server on stdin/stdout for the agent's client: each tool call becomes a proposal
    with the executor token in MANDATE_TOKEN, and is forwarded upstream only when Mandate
    executes it or a person approves it (README: MCP)."""
    import os

    from gateway.mcp.proxy import ProxyError, ProxyOptions, run_proxy

    token = os.environ.get("MANDATE_TOKEN")
    if not token:
        raise fail("set MANDATE_TOKEN to the proxy's executor token (mandate token create)")
    options = ProxyOptions(workflow=workflow, on_hold=on_hold, hold_timeout=hold_timeout)
    try:
        run_proxy(
            options,
            gateway_url=url,
            token=token,
            command=upstream or (),
            upstream_url=upstream_url,
            environ=os.environ,
        )
    except ProxyError as exc:
        raise fail(str(exc)) from None


def _refused(exc: Exception) -> typer.Exit:
    """The exit for an SDK error: 1 for a state that refuses the request (409), else 2."""
    from rich.markup import escape

    from gateway.client import Conflict

    return fail(escape(str(exc)), code=1 if isinstance(exc, Conflict) else 2)


_T = TypeVar("_T")


def _ask(url: str, token: str, call: Callable[[MandateClient], _T]) -> _T:
    """Run ``call`` on a client of the gateway at ``url``; an SDK error exits (``_refused``)."""
    from gateway.client import MandateClient, MandateError

    try:
        with MandateClient(url, token) as client:
            return call(client)
    except (MandateError, ValueError) as exc:
        raise _refused(exc) from None


def _check_status(status: str, states: Sequence[str]) -> None:
    if status not in states:
        raise fail(f"unknown status {status!r}; one of {', '.join(states)}")


def _print_list(
    found: Sequence[BaseModel],
    *,
    as_json: bool,
    empty: str,
    headers: list[str],
    rows: list[list[str]],
) -> None:
    """A list command's answer: JSON, a line saying there is nothing, or columns."""
    if as_json:
        print(json.dumps([item.model_dump(mode="json") for item in found], indent=2))
    elif not found:
        err.print(empty, highlight=False)
    else:
        print(_columns([headers, *rows]))


@approvals_app.command("list")
def approvals_list(
    token: GatewayToken,
    status: Annotated[
        str,
        typer.Option(
            help="Only approvals in this state: pending, approved, rejected, expired, superseded "
            "or withdrawn."
        ),
    ] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List the approvals your token may decide (or oversee), newest first.

    One line each: approval id, workflow, case type, executor, amount, confidence, approvals
    so far of the quorum, expiry, and why the action was held.
    """
    from typing import cast

    _check_status(status, ("pending", "approved", "rejected", "expired", "superseded", "withdrawn"))
    approvals = _ask(url, token, lambda client: client.approvals(cast(Any, status)))
    headers = ["APPROVAL", "WORKFLOW", "CASE TYPE", "EXECUTOR", "AMOUNT", "CONF", "VOTES"]
    rows = [
        [
            a.id,
            a.workflow,
            a.case_type,
            a.executor,
            a.amount or "-",
            a.confidence or "-",
            f"{a.approvals}/{a.quorum}",
            a.expires_at,
            "; ".join(r.code for r in a.reasons) or "-",
        ]
        for a in approvals
    ]
    _print_list(
        approvals,
        as_json=as_json,
        empty=f"no {status} approvals",
        headers=[*headers, "EXPIRES", "HELD BECAUSE"],
        rows=rows,
    )


def _vote(
    approval_id: str, approve: bool, reason: str, url: str, token: str, as_json: bool
) -> None:
    verdict: Literal["approve", "reject"] = "approve" if approve else "reject"
    approval = _ask(url, token, lambda client: client.decide(approval_id, verdict, reason))
    if as_json:
        print(approval.model_dump_json(indent=2))
        return
    line = f"{approval.id} {approval.status} ({approval.approvals}/{approval.quorum} approvals)"
    if approval.status == "pending":
        line += f"; waiting for {approval.quorum - approval.approvals} more"
    print(f"{line}; action {approval.action_id}")


ApprovalId = Annotated[str, typer.Argument(metavar="ID", help="The approval's id (apr_…).")]


@approvals_app.command("approve")
def approvals_approve(
    approval_id: ApprovalId,
    token: GatewayToken,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Approve a held action. At quorum it is approved and carried out.

    Prints the approval's state after your vote. Voting the same way twice counts once; you
    never approve your own proposal (separation of duties). Exit 1 if the approval is no
    longer pending (decided, expired, or re-evaluated after a policy change).
    """
    _vote(approval_id, True, reason, url, token, as_json)


@approvals_app.command("reject")
def approvals_reject(
    approval_id: ApprovalId,
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Reject a held action: one rejection rejects, and it never runs.

    Exit 1 if the approval is no longer pending (decided, expired, or re-evaluated).
    """
    if not reason.strip():
        raise fail("a reason is required to reject (--reason)")
    _vote(approval_id, False, reason, url, token, as_json)


@actions_app.command("show")
def actions_show(
    action_id: Annotated[str, typer.Argument(metavar="ID", help="The action's id (act_…).")],
    token: GatewayToken,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Show an action: its status, verdict and reasons, then its ledger timeline.

    The timeline has one line per ledger entry: seq, time, kind (proposal, decision, approval,
    rejection, expiry, execution, outcome...) and what happened. The proposer, and approvers,
    governors and auditors of its workflow may look.
    """
    action = _ask(url, token, lambda client: client.get_action(action_id))
    if as_json:
        print(action.model_dump_json(indent=2))
        return
    decision = action.decision
    facts = [
        ["action", action.action_id],
        ["status", action.status],
        [
            "verdict",
            f"{action.verdict} (recommended {decision.trace.recommendation}, level "
            f"{decision.trace.autonomy.level} {decision.trace.autonomy.name})",
        ],
        ["workflow", f"{action.workflow}, case type {action.case_type}"],
        ["type", action.action_type],
        ["executor", action.executor],
        ["created", action.created_at],
    ]
    for reason in decision.reasons:
        facts.append(["reason", f"{reason.code}: {reason.message} ({reason.source})"])
    if decision.approval is not None:
        facts.append(
            [
                "approval",
                f"{decision.approval.id} (quorum {decision.approval.quorum}, expires "
                f"{decision.approval.expires_at})",
            ]
        )
    print(_columns(facts))
    print()
    rows = [
        [str(e.get("seq", "")), str(e.get("time", "")), str(e.get("kind", "")), _summary(e)]
        for e in action.timeline
    ]
    print(_columns([["SEQ", "TIME", "KIND", "WHAT HAPPENED"], *rows]))


# -- autonomy and audits: over HTTP, like approvals ---------------------------------------------

autonomy_app = typer.Typer(
    help=(
        "Earned autonomy: each case type's level and measured figures, promotions the gateway "
        "proposed, levels set by hand. Talks to a running gateway (--url) with a token "
        "(--token or MANDATE_TOKEN); changing levels takes a governor's."
    ),
    no_args_is_help=True,
)
app.add_typer(autonomy_app, name="autonomy")
audits_app = typer.Typer(
    help=(
        "Post-hoc audits: the executed actions drawn for audit, and findings on them. Talks to "
        "a running gateway (--url) with an auditor's token (--token or MANDATE_TOKEN)."
    ),
    no_args_is_help=True,
)
app.add_typer(audits_app, name="audits")


def _pct(bp: int) -> str:
    """Basis points as a percentage without spaces (one column): 9500 → ``95.00%``."""
    return f"{bp // 100}.{bp % 100:02d}%"


@autonomy_app.command("show")
def autonomy_show(
    token: GatewayToken,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Every case type: its level, the figures of its window and what comes next.

    Columns: workflow, case type, level and its name, decisions, holds, reviewed (execute
    recommendations people judged), agreement, failures and errors (rates in the window), and
    the promotion: a pending one (id and votes), else the next level's unmet criteria.
    """
    views = _ask(url, token, lambda client: client.autonomy(workflow))
    rows = []
    for v in views:
        f = v.figures
        if v.pending_promotion is not None:
            p = v.pending_promotion
            nxt = f"{p.id} to {p.to_level} pending ({p.approvals}/{p.quorum})"
        elif v.promotion is None:
            nxt = "-"
        elif v.promotion.met:
            nxt = f"to {v.promotion.level}: criteria met"
        else:
            nxt = f"to {v.promotion.level}: " + "; ".join(v.promotion.unmet)
        rows.append(
            [
                v.workflow,
                v.case_type,
                str(v.level),
                v.name,
                str(f.decisions),
                str(f.holds),
                str(f.reviewed),
                _pct(f.agreement_bp),
                _pct(f.failure_bp),
                _pct(f.error_bp),
                nxt,
            ]
        )
    headers = ["WORKFLOW", "CASE TYPE", "LEVEL", "NAME", "DECISIONS", "HOLDS", "REVIEWED"]
    _print_list(
        views,
        as_json=as_json,
        empty="no case types",
        headers=[*headers, "AGREEMENT", "FAILURES", "ERRORS", "PROMOTION"],
        rows=rows,
    )


@autonomy_app.command("set")
def autonomy_set(
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW")],
    case_type: Annotated[str, typer.Argument(metavar="CASE_TYPE")],
    level: Annotated[
        int,
        typer.Argument(
            metavar="LEVEL", min=1, max=4, help="1 advisory, 2 supervised, 3 conditional, 4 full."
        ),
    ],
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Set a case type's level by hand (a governor's token), with a reason.

    The change is an `autonomy` ledger entry with the figures at that moment; every gateway
    applies it within a second and starts a new window of figures. Exit 1 if the case type is
    at that level already.
    """
    if not reason.strip():
        raise fail("a reason is required (--reason)")

    def change(client: MandateClient) -> tuple[int, AutonomyDetail]:
        before = client.autonomy_of(workflow, case_type).level
        return before, client.set_level(workflow, case_type, level, reason)

    before, view = _ask(url, token, change)
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(f"{workflow}/{case_type}: level {before} -> {view.level} ({view.name}); {view.source}")


@autonomy_app.command("promotions")
def autonomy_promotions(
    token: GatewayToken,
    status: Annotated[
        str, typer.Option(help="pending, approved, rejected or superseded.")
    ] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List promotions the gateway proposed, newest first: id, case type, levels, votes, and
    the figures that met the criteria."""
    _check_status(status, ("pending", "approved", "rejected", "superseded"))
    found = _ask(url, token, lambda client: client.promotions(status))
    rows = [
        [
            p.id,
            p.workflow,
            p.case_type,
            f"{p.from_level}->{p.to_level}",
            f"{p.approvals}/{p.quorum}",
            p.status,
            f"reviewed {p.figures.reviewed}, agreement {_pct(p.figures.agreement_bp)}, "
            f"failures {_pct(p.figures.failure_bp)}, errors {_pct(p.figures.error_bp)}",
        ]
        for p in found
    ]
    headers = ["PROMOTION", "WORKFLOW", "CASE TYPE", "LEVELS", "VOTES", "STATUS", "FIGURES"]
    _print_list(found, as_json=as_json, empty=f"no {status} promotions", headers=headers, rows=rows)


def _promotion_vote(
    promotion_id: str, approve: bool, reason: str, url: str, token: str, as_json: bool
) -> None:
    verdict: Literal["approve", "reject"] = "approve" if approve else "reject"
    view = _ask(url, token, lambda client: client.decide_promotion(promotion_id, verdict, reason))
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(
        f"{view.id} {view.status} ({view.approvals}/{view.quorum} approvals); "
        f"{view.workflow}/{view.case_type} {view.from_level}->{view.to_level}"
    )


PromotionId = Annotated[str, typer.Argument(metavar="ID", help="The promotion's id (prm_…).")]


@autonomy_app.command("approve")
def autonomy_approve(
    promotion_id: PromotionId,
    token: GatewayToken,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Approve a proposed promotion (a governor's token). At quorum the level rises.

    Exit 1 if the promotion is no longer pending."""
    _promotion_vote(promotion_id, True, reason, url, token, as_json)


@autonomy_app.command("reject")
def autonomy_reject(
    promotion_id: PromotionId,
    token: GatewayToken,
    reason: Annotated[
        str, typer.Option(help="Why (required; recorded in the ledger).", show_default=False)
    ],
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Reject a proposed promotion: one rejection rejects. Exit 1 if it is no longer pending."""
    if not reason.strip():
        raise fail("a reason is required to reject (--reason)")
    _promotion_vote(promotion_id, False, reason, url, token, as_json)


@audits_app.command("list")
def audits_list(
    token: GatewayToken,
    status: Annotated[str, typer.Option(help="pending, correct or incorrect.")] = "pending",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """List the audits your token may carry out, oldest first."""
    _check_status(status, ("pending", "correct", "incorrect"))
    found = _ask(url, token, lambda client: client.audits(status))
    rows = [
        [
            a.id,
            a.action_id,
            a.workflow,
            a.case_type,
            a.executor,
            a.amount or "-",
            str(a.level),
            a.status,
            f"{a.action_type} on {a.resource}",
        ]
        for a in found
    ]
    headers = ["AUDIT", "ACTION", "WORKFLOW", "CASE TYPE", "EXECUTOR", "AMOUNT", "LEVEL"]
    _print_list(
        found,
        as_json=as_json,
        empty=f"no {status} audits",
        headers=[*headers, "STATUS", "WHAT"],
        rows=rows,
    )


@audits_app.command("record")
def audits_record(
    audit_id: Annotated[str, typer.Argument(metavar="ID", help="The audit's id (aud_…).")],
    finding: Annotated[str, typer.Argument(metavar="FINDING", help="correct or incorrect.")],
    token: GatewayToken,
    note: Annotated[str, typer.Option(help="What you found (required if incorrect).")] = "",
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Record a finding on an audited action (an `audit` ledger entry). Exit 1 if it has one."""
    if finding not in ("correct", "incorrect"):
        raise fail(f"the finding is correct or incorrect, not {finding!r}")
    if finding == "incorrect" and not note.strip():
        raise fail("a note is required for an incorrect finding (--note)")
    kind: Literal["correct", "incorrect"] = "correct" if finding == "correct" else "incorrect"
    view = _ask(url, token, lambda client: client.record_finding(audit_id, kind, note))
    if as_json:
        print(view.model_dump_json(indent=2))
        return
    print(f"{view.id} {view.status}; action {view.action_id}; ledger #{view.finding_seq}")


def _columns(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns (the last one unpadded), for people and for `cut`/`awk`."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _summary(entry: dict[str, Any], limit: int = 160) -> str:
    """One line saying what a timeline entry records."""
    kind = entry.get("kind")
    body = entry.get("body") or {}
    who = (body.get("voter") or body.get("executor") or {}).get("name", "?")
    if kind == "proposal":
        proposal = body.get("proposal") or {}
        text = f"{who} proposed {proposal.get('action_type')} on {proposal.get('resource')}"
        amount = (proposal.get("params") or {}).get("amount")
        text += f", amount {amount}" if amount is not None else ""
        confidence = proposal.get("confidence")
        text += f", confidence {confidence}" if confidence is not None else ""
    elif kind == "decision":
        codes = ", ".join(r.get("code", "?") for r in body.get("reasons") or [])
        text = str(body.get("verdict"))
        level = ((body.get("trace") or {}).get("autonomy") or {}).get("level")
        text += f" at level {level}" if level is not None else ""
        text += f": {codes}" if codes else ""
        if body.get("approval"):
            text += (
                f"; approval {body['approval'].get('id')} needs {body['approval'].get('quorum')}"
            )
        if body.get("reevaluated"):
            text = f"re-evaluated, {text} ({body['reevaluated'].get('because')})"
    elif kind == "approval":
        text = f"{who} approved" + (f": {body['reason']}" if body.get("reason") else "")
    elif kind == "rejection":
        text = f"{who} rejected: {body.get('reason', '')}"
    elif kind == "expiry":
        text = f"approval {body.get('approval_id')} expired without quorum"
    elif kind == "withdrawal":
        text = f"{who} withdrew it: {body.get('reason', '')}"
    elif kind == "execution" and body.get("result") == "retry":
        text = (
            f"attempt {body.get('attempt')} failed: {body.get('error')}; next attempt at "
            f"{body.get('next_attempt_at')}"
        )
    elif kind == "execution":
        target = f" to {body['target']}" if body.get("target") else ""
        text = f"attempt {body.get('attempt')} via {body.get('adapter')}{target}"
    elif kind == "outcome":
        by = "reported by the executor" if body.get("attempt") is None else "from the adapter"
        detail = body.get("detail")
        text = f"{body.get('status')}, {by}"
        text += f": {json.dumps(detail, sort_keys=True)}" if detail else ""
    else:
        rest = {k: v for k, v in body.items() if k != "action_id"}
        text = json.dumps(rest, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- policy: test, activate, replay ------------------------------------------------------------
# `policy test` works on a directory alone. `activate` and `replay` talk to a running gateway
# when --url (or MANDATE_URL) is given, with a policy-admin token; without it they work on the
# local database (--data-dir, --database-url) directly, as the operator who holds it.

policy_app = typer.Typer(
    help=(
        "Policy bundles: test one (Rego unit tests, decision cases, coverage), activate one "
        "(or run it in shadow), replay the recorded history with a candidate. activate and "
        "replay talk to a running gateway when --url (or MANDATE_URL) is set, with a "
        "policy-admin token; otherwise they work on the local database directly."
    ),
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")

BundleDir = Annotated[
    Path,
    typer.Argument(metavar="DIR", help="The bundle directory (rego/, casbin/, data.json, tests/)."),
]
RemoteUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="MANDATE_URL",
        help="A running gateway to do it through (with --token); without it, the local "
        "database is used directly.",
        show_envvar=True,
        show_default=False,
    ),
]
RemoteToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MANDATE_TOKEN",
        help="A policy-admin token, with --url. Prefer the environment variable.",
        show_default=False,
        show_envvar=True,
    ),
]


def _checked(directory: Path, *, report: bool) -> Any:
    """Load and check a bundle; exit 2 if it cannot be checked, 1 if it fails."""
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.checks import check_bundle, describe

    try:
        bundle = load_bundle(directory)
    except BundleError as exc:
        raise fail(str(exc)) from None
    check = check_bundle(bundle)
    if report or not check.passed:
        for line in describe(check):
            err.print(escape(line), highlight=False, soft_wrap=True)
    if not check.usable:
        raise fail("the bundle cannot be checked (see above)")
    if not check.passed:
        raise fail(f"the bundle fails its checks: {len(check.failures())} failures", code=1)
    return check


@policy_app.command("test")
def policy_test(
    directory: Annotated[
        Path,
        typer.Argument(metavar="[DIR]", help="The bundle directory [default: ./policies]."),
    ] = Path("policies"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Test a bundle: its Rego unit tests, its decision cases, and which rules fired.

    Rego unit tests are the `test_` rules of rego/*_test.rego, run as `opa test` runs them.
    Decision cases (tests/*.yaml, format in policies/README.md) are decided exactly as the
    gateway decides: Casbin, the workflow's Rego at the autonomy level, the level-1 rule.
    Coverage (regorus) shows each rule with the number of cases that fired it and whether a
    unit test did. Exit 0 when everything passes, 1 on any failure, 2 if the bundle or a case
    file cannot be used.
    """
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.checks import check_bundle, describe

    try:
        bundle = load_bundle(directory)
    except BundleError as exc:
        raise fail(str(exc)) from None
    check = check_bundle(bundle)
    if as_json:
        print(json.dumps(check.to_json(), indent=2))
    else:
        print("\n".join(describe(check)))
    raise typer.Exit(0 if check.passed else (2 if not check.usable else 1))


def _operator() -> Any:
    """Who acts when a command works on the database directly."""
    import getpass
    import socket

    from gateway.identity import Identity

    user = getpass.getuser()
    name = f"{user}@{socket.gethostname()}"[:120]
    return Identity(
        token_id="local",  # noqa: S106 - a name, not a secret
        name=name,
        role="policy-admin",
        workflow=None,
        owner=user,
    )


def _bundle_texts(directory: Path) -> dict[str, str]:
    from gateway.policy.bundle import BundleError, read_bundle_files

    try:
        files = read_bundle_files(directory)
        return {path: content.decode("utf-8") for path, content in files.items()}
    except BundleError as exc:
        raise fail(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise fail(f"{directory}: a bundle holds UTF-8 text files only: {exc}") from None


def _http_failure(response: Any) -> typer.Exit:
    """A problem answer as a message: exit 1 when the gateway found the bundle bad (422) or
    the state refuses (409), else 2."""
    try:
        problem = response.json()
        detail = problem.get("detail") or problem.get("title")
        errors = problem.get("errors") or []
    except ValueError:
        detail, errors = response.text[:500], []
    for item in errors:
        err.print(f"  {escape(item['field'])}: {escape(item['message'])}", highlight=False)
    code = 1 if response.status_code in (409, 422) else 2
    return fail(f"the gateway answered {response.status_code}: {detail}", code=code)


def _client(url: str, token: str | None) -> Any:
    import httpx

    if not token:
        raise fail("--url needs a policy-admin token (--token or MANDATE_TOKEN)")
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0)
    )


@policy_app.command("activate")
def policy_activate(
    directory: BundleDir,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).", show_default=False)],
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Run it beside the active bundle instead: every proposal is decided by both, "
            "only the active verdict is enforced, disagreements are listed by GET "
            "/v1/policies/shadow.",
        ),
    ] = False,
    url: RemoteUrl = None,
    token: RemoteToken = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Check a bundle and make it the active one (or the shadow).

    The bundle must load and pass its Rego tests and decision cases (as `policy test`), here
    and again on the gateway. Activation writes a `policy` ledger entry (digest, every file's
    SHA-256, who, why) and stores the files in the database: every gateway process on it
    switches within its poll interval (policy_poll_interval, 0.5 s); held approvals are
    re-evaluated at their next vote.

    With --url, through that gateway with a policy-admin token. Without it, on the database
    directly (--data-dir / --database-url), recorded as the operator (user@host). Exit 1 if
    the bundle fails its checks, 2 if it cannot be used.
    """
    if not reason.strip():
        raise fail("a reason is required (--reason)")
    mode = "shadow" if shadow else "active"
    check = _checked(directory, report=False)
    bundle = check.bundle
    if url:
        with _client(url, token) as client:
            try:
                response = client.post(
                    "/v1/policies",
                    json={"files": _bundle_texts(directory), "reason": reason, "mode": mode},
                )
            except Exception as exc:
                raise fail(f"cannot reach the gateway at {url}: {exc}") from None
        if response.status_code != 200:
            raise _http_failure(response)
        answer = response.json()
        changed, seq, who = answer["changed"], answer["policy"]["ledger_seq"], "the gateway"
    else:
        from gateway.policies import write_slot
        from gateway.storage import open_ledger

        settings = settings_from(data_dir, database_url)
        engine = open_database(settings)
        try:
            with open_ledger(settings, engine) as ledger:
                written = write_slot(
                    engine,
                    ledger,
                    mode,  # type: ignore[arg-type]
                    bundle,
                    by=_operator(),
                    reason=reason,
                    validation=check.summary(),
                )
        except LedgerError as exc:
            raise fail(exc.diagnostics()) from None
        finally:
            engine.dispose()
        changed, seq, who = written.changed, written.slot.seq, "the local database"
    summary = check.summary()
    if not changed:
        err.print(f"bundle {bundle.digest[:12]} is already the {mode} one; nothing changed")
    else:
        err.print(
            f"bundle {bundle.digest[:12]} ({len(bundle.files)} files, workflows "
            f"{', '.join(sorted(bundle.workflows))}; {summary['rego_tests']['passed']} Rego "
            f"tests and {summary['cases']['passed']} decision cases passed) is now the {mode} "
            f"bundle in {who}: policy entry #{seq}",
            highlight=False,
        )
    print(bundle.digest)


@policy_app.command("replay")
def policy_replay(
    candidate: Annotated[
        Path | None,
        typer.Option(
            "--candidate",
            help="The candidate bundle directory. Without it, each decision is replayed with "
            "the bundle that made it: a check that the history is reproducible.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only decisions made at or after this date or time (2026-11-01, "
            "2026-11-01T08:00:00Z).",
            show_default=False,
        ),
    ] = None,
    examples: Annotated[
        int, typer.Option(help="Examples shown per verdict change.", min=0, max=50)
    ] = 3,
    fail_on_change: Annotated[
        bool, typer.Option("--fail-on-change", help="Exit 1 if any verdict would change.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    url: RemoteUrl = None,
    token: RemoteToken = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Re-decide the recorded history with a candidate bundle and report what would change.

    Every decision in the ledger (since --since) is decided again with the candidate from the
    inputs its entries recorded: the proposal, the executor, the autonomy level, the figures
    and the time. The report: how many verdicts would change and from what to what, by
    workflow and case type, the reason codes the candidate adds or removes, and examples.
    Nothing is written. The ledger is read in pages (a progress bar shows how far).

    With --url, the gateway replays (policy-admin token); without it, this process reads the
    local database. Exit 0, or 1 with --fail-on-change when a verdict would change; 2 if the
    candidate or --since cannot be used.
    """
    from gateway.replay import parse_since

    try:
        since_stamp = None if since is None else parse_since(since)
    except ValueError:
        raise fail(f"--since {since!r}: a date (2026-11-01) or an ISO time") from None
    if url:
        report = _replay_remote(url, token, candidate, since, examples)
    else:
        report = _replay_local(candidate, since_stamp, examples, data_dir, database_url)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_replay_lines(report)))
    raise typer.Exit(1 if fail_on_change and report["changed"] else 0)


def _replay_local(
    candidate: Path | None,
    since: str | None,
    examples: int,
    data_dir: Path | None,
    database_url: str | None,
) -> dict[str, Any]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.policies import BundleStore, build_policy
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.replay import Replayer
    from gateway.storage import open_engine
    from ledger.store import Ledger

    policy = None
    if candidate is not None:
        try:
            policy = build_policy(load_bundle(candidate))
        except BundleError as exc:
            raise fail(str(exc)) from None
        except Exception as exc:  # the Rego does not load
            raise fail(f"{candidate}: {exc}") from None
    settings = settings_from(data_dir, database_url)
    engine = open_engine(settings)
    store = BundleStore(engine)
    try:
        ledger = Ledger(engine, origin=settings.ledger_origin)  # read only: no writer
        replayer = Replayer(
            ledger,
            engine,
            policy,
            recorded=lambda digest: build_policy(store.bundle(digest)),
            since=since,
            examples=examples,
        )
        with _bar("replaying") as bar:
            task = bar.add_task("replaying", total=None)
            result = replayer.run(
                lambda p: bar.update(task, completed=p.scanned, total=p.total or None)
            )
    except LedgerError as exc:
        raise fail(exc.diagnostics()) from None
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        where = make_url(settings.database).render_as_string(hide_password=True)
        raise fail(f"cannot read the ledger at {where}: {first}") from None
    finally:
        engine.dispose()
    return result.to_json()


def _replay_remote(
    url: str, token: str | None, candidate: Path | None, since: str | None, examples: int
) -> dict[str, Any]:
    files = None if candidate is None else _bundle_texts(candidate)
    body = {"files": files, "since": since, "examples": examples}
    report: dict[str, Any] | None = None
    with _client(url, token) as client, _bar("replaying") as bar:
        task = bar.add_task("replaying", total=None)
        try:
            with client.stream("POST", "/v1/policies/replay", json=body, timeout=None) as got:
                if got.status_code != 200:
                    got.read()
                    raise _http_failure(got)
                for line in got.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["event"] == "progress":
                        bar.update(task, completed=event["scanned"], total=event["total"] or None)
                    elif event["event"] == "report":
                        report = event
                    else:
                        raise fail(f"the replay failed: {event.get('detail')}")
        except typer.Exit:
            raise
        except Exception as exc:
            raise fail(f"the replay through {url} failed: {exc}") from None
    if report is None:
        raise fail("the gateway ended the replay without a report")
    return report


def _replay_lines(report: dict[str, Any]) -> list[str]:
    """The replay report for people."""
    decisions = report["decisions"]
    changed = report["changed"]
    share = f" ({changed / decisions:.2%})" if decisions else ""
    rate = report.get("decisions_per_second")
    lines = [
        f"Replayed {decisions:,} decisions ({report['entries_scanned']:,} ledger entries read"
        + (f", since {report['since']}" if report.get("since") else "")
        + (
            ") with the bundle that made each"
            if report["candidate_digest"] == "as-recorded"
            else f") with candidate {report['candidate_digest'][:16]}…"
        )
        + f" in {report['seconds']:.1f} s"
        + (f" ({rate:,.0f} decisions/s)" if rate else ""),
        f"Verdicts that would change: {changed:,}{share}; unchanged: {report['unchanged']:,}; "
        f"same verdict for other reasons: {report['reasons_changed']:,}; the candidate "
        f"refuses or fails on: {report['refused_or_failed']:,}",
    ]
    for t in report["transitions"]:
        lines.append(f"  {t['from']} → {t['to']}: {t['count']:,}")
    if changed:
        lines += ["", "By workflow and case type (changed of decided; from → to; rules):"]
        rows = []
        for g in report["groups"]:
            if not g["changed"]:
                continue
            moves = ", ".join(f"{t['from']}→{t['to']} {t['count']}" for t in g["transitions"])
            rules = ", ".join(_rule_text(r) for r in g["rules"]) or "-"
            rows.append(
                [g["workflow"], g["case_type"], f"{g['changed']}/{g['decisions']}", moves, rules]
            )
        lines.append(_columns([["WORKFLOW", "CASE TYPE", "CHANGED", "FROM → TO", "RULES"], *rows]))
        lines += ["", "Rules that made the difference (+ the candidate adds it, - it drops it):"]
        lines += [f"  {_rule_text(r)}" for r in report["rules"]] or [
            "  (none: Casbin or the level)"
        ]
        lines += ["", "Examples:"]
        for ex in report["examples"]:
            before = ex["before"]
            after = ex["after"]
            codes_before = ", ".join(r["code"] for r in before["reasons"]) or "-"
            codes_after = (
                ", ".join(r["code"] for r in after["reasons"]) or after.get("error") or "-"
            )
            lines.append(
                f"  {before['verdict']} → {after['verdict']}  {ex['action_id']} "
                f"({ex['workflow']}/{ex['case_type']}, {ex['role']}, level {ex['level']}, "
                f"{ex['decided_at']}): was [{codes_before}], now [{codes_after}]"
            )
            lines.append(f"      proposal {json.dumps(ex['proposal'], sort_keys=True)}")
    lines.append("")
    if report["input_mismatches"]:
        lines.append(
            f"WARNING: {report['input_mismatches']} decisions' Rego input could not be rebuilt "
            f"from the ledger (seqs {report['input_mismatch_seqs']}): they depended on "
            "something not recorded"
        )
    else:
        lines.append("Every replayed decision's Rego input was rebuilt from the ledger exactly.")
    if report.get("proposals_missing"):
        lines.append(f"{report['proposals_missing']} decisions had no proposal entry to replay.")
    return lines


def _rule_text(rule: dict[str, Any]) -> str:
    parts = []
    if rule["added"]:
        parts.append(f"+{rule['code']} {rule['added']}")
    if rule["removed"]:
        parts.append(f"-{rule['code']} {rule['removed']}")
    return ", ".join(parts)


# -- db: the database's schema (Alembic migrations, gateway/migrations) ------------------------

db_app = typer.Typer(
    help=(
        "The database's schema (the gateway's tables and the ledger's): bring it up to date, "
        "show its revision, check it. A gateway brings its database up to date itself when it "
        "starts, unless auto_migrate is off (MANDATE_AUTO_MIGRATE=false): then run `mandate db "
        "upgrade` after installing a new Mandate, before starting the gateways."
    ),
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")


def _schema_state(data_dir: Path | None, database_url: str | None) -> Any:
    """Where the database stands against this code's revisions (exit 2 if it is unreachable)."""
    import sqlalchemy.exc

    from gateway.migrations import schema_state
    from gateway.storage import open_engine

    engine = open_engine(settings_from(data_dir, database_url))
    try:
        return schema_state(engine)
    except sqlalchemy.exc.OperationalError as exc:
        raise fail(f"cannot use the database: {exc.orig or exc}") from None
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply the migrations this database lacks, so that this version of Mandate can use it.

    When: after installing a new Mandate, if the gateways run with auto_migrate=false;
    or to prepare a new PostgreSQL database before the first gateway starts.
    Safe to repeat, and to run from several hosts at once: one applies each revision.
    A database made before migrations existed is checked, then stamped with revision 0001.
    Prints the revision on stdout.

    Exit 0 up to date, 1 the tables are not what Mandate expects (nothing was changed),
    2 the database cannot be reached.
    """
    import sqlalchemy.exc

    from gateway.migrations import BASELINE, SchemaError, upgrade
    from gateway.storage import open_engine

    engine = open_engine(settings_from(data_dir, database_url))
    try:
        done = upgrade(engine)
    except SchemaError as exc:
        raise fail(str(exc), code=1) from None
    except sqlalchemy.exc.OperationalError as exc:
        raise fail(f"cannot use the database: {exc.orig or exc}") from None
    finally:
        engine.dispose()
    if done.adopted:
        err.print(
            f"adopted {len(done.adopted)} tables made before migrations: they match revision "
            f"{BASELINE}, which is now stamped",
            highlight=False,
        )
    if done.applied:
        start = done.start or "an empty schema"
        err.print(f"upgraded from {start} to {done.after} (head)", highlight=False)
    elif not done.adopted:
        err.print(f"already at head {done.after}; nothing to do", highlight=False)
    print(done.after)


@db_app.command("current")
def db_current(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Print the database's revision (alone on stdout; nothing if it has none).

    On stderr: how it compares with this version of Mandate's head, and what to run.
    """
    state = _schema_state(data_dir, database_url)
    if state.current is not None:
        print(state.current)
    err.print(state.describe(), highlight=False, soft_wrap=True)


@db_app.command("check")
def db_check(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Check that the database is at this version of Mandate's head.

    For deployment scripts with auto_migrate=false. Exit 0 at head;
    1 behind it, or upgraded by a newer Mandate (it says what to run);
    2 the database cannot be reached.
    """
    state = _schema_state(data_dir, database_url)
    if not state.at_head:
        raise fail(state.describe(), code=1)
    err.print(state.describe(), highlight=False)
