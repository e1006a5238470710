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
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from gateway.settings import Settings
from ledger.errors import LedgerError

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


def _refused(exc: Exception) -> typer.Exit:
    """The exit for an SDK error: 1 for a state that refuses the request (409), else 2."""
    from rich.markup import escape

    from gateway.client import Conflict

    return fail(escape(str(exc)), code=1 if isinstance(exc, Conflict) else 2)


@approvals_app.command("list")
def approvals_list(
    token: GatewayToken,
    status: Annotated[
        str,
        typer.Option(
            help="Only approvals in this state: pending, approved, rejected, expired or superseded."
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

    from gateway.client import MandateClient, MandateError

    states = ("pending", "approved", "rejected", "expired", "superseded")
    if status not in states:
        raise fail(f"unknown status {status!r}; one of {', '.join(states)}")

    try:
        with MandateClient(url, token) as client:
            approvals = client.approvals(cast(Any, status))
    except MandateError as exc:
        raise _refused(exc) from None
    if as_json:
        print(json.dumps([a.model_dump(mode="json") for a in approvals], indent=2))
        return
    if not approvals:
        err.print(f"no {status} approvals", highlight=False)
        return
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
    headers = ["APPROVAL", "WORKFLOW", "CASE TYPE", "EXECUTOR", "AMOUNT", "CONF", "VOTES"]
    print(_columns([[*headers, "EXPIRES", "HELD BECAUSE"], *rows]))


def _vote(
    approval_id: str, approve: bool, reason: str, url: str, token: str, as_json: bool
) -> None:
    from gateway.client import MandateClient, MandateError

    try:
        with MandateClient(url, token) as client:
            approval = client.decide(approval_id, "approve" if approve else "reject", reason)
    except (MandateError, ValueError) as exc:
        raise _refused(exc) from None
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
    from gateway.client import MandateClient, MandateError

    try:
        with MandateClient(url, token) as client:
            action = client.get_action(action_id)
    except (MandateError, ValueError) as exc:
        raise _refused(exc) from None
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
