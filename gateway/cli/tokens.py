"""``mandate token``: bearer tokens made on the local database, stored hashed, shown once."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.console import err, fail, tabulate
from gateway.cli.local import DatabaseUrl, DataDir, Policies, open_database, settings_from

__all__ = ["token_app"]

token_app = typer.Typer(
    help="Bearer tokens: made here, stored hashed, shown once, listed without their secrets.",
    no_args_is_help=True,
)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A unique name, e.g. booking-bot-1 or alice.")],
    role: Annotated[
        str,
        typer.Option(
            help="An executor role from the Casbin policy (e.g. booking-agent) or one of "
            "approver, governor, auditor, policy-admin, witness (cosigns checkpoints)."
        ),
    ],
    workflow: Annotated[str | None, typer.Option(help="Bind the token to one workflow.")] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Who owns it (tokens of one owner never approve each other's proposals).",
            show_default="the name",
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    policies: Policies = None,
) -> None:
    """Make a token and print it (alone, on stdout). It is shown this once; only its hash is
    kept."""
    from gateway.identity import GATEWAY_ROLES, TokenBook
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.permit import Permitter

    settings = settings_from(data_dir, database_url, policies=policies)
    try:
        bundle = load_bundle(settings.policies)
    except BundleError as exc:
        raise fail(str(exc)) from None
    executors = Permitter(bundle.casbin_model, bundle.casbin_policy).roles_with_act("propose")
    roles = sorted(executors) + list(GATEWAY_ROLES)
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
    engine = open_database(settings, create=False)
    try:
        revoked = TokenBook(engine).revoke(name)
    finally:
        engine.dispose()
    if not revoked:
        raise fail(f"no live token named {name!r}", code=1)
    err.print(f"revoked {name}", highlight=False)


@token_app.command("list")
def token_list(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array instead of text.")
    ] = False,
) -> None:
    """List every token, live and revoked: name, role, workflow binding, owner, when it was
    made and revoked. Never the tokens themselves: only their hashes are kept."""
    import dataclasses
    import json

    from gateway.identity import TokenBook

    settings = settings_from(data_dir, database_url)
    engine = open_database(settings, create=False)
    try:
        tokens = TokenBook(engine).listing()
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps([dataclasses.asdict(token) for token in tokens], indent=2))
        return
    if not tokens:
        err.print("no tokens; make one with `mandate token create`", highlight=False)
        return
    headers = ["NAME", "ROLE", "WORKFLOW", "OWNER", "CREATED", "REVOKED"]
    rows = [
        [t.name, t.role, t.workflow or "-", t.owner, t.created_at, t.revoked_at or "-"]
        for t in tokens
    ]
    print(tabulate([headers, *rows]))
