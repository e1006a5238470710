"""The ``mandate`` command line: a thin layer over the gateway and ledger APIs.

Conventions: results on stdout, messages on stderr; exit 0 success, 1 the checked thing is bad
(a tampered ledger, a failing policy test), 2 unusable input or usage.

This module only assembles the command groups, one module each. Commands import what they use
when they run: `mandate --help` and the HTTP commands should not pay for SQLAlchemy, FastAPI
and the policy engines.
"""

from __future__ import annotations

import typer

from gateway.cli.actions import actions_app
from gateway.cli.approvals import approvals_app
from gateway.cli.audits import audits_app
from gateway.cli.autonomy import autonomy_app
from gateway.cli.db import db_app
from gateway.cli.ledger import ledger_app
from gateway.cli.mcp import mcp_app
from gateway.cli.policy import policy_app
from gateway.cli.serve import demo, serve
from gateway.cli.tokens import token_app

__all__ = ["app"]

app = typer.Typer(
    help=(
        "Mandate: a policy-as-code gateway for autonomous operations, with a signed ledger "
        "that regulators verify offline."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# `mandate --help` lists them in this order.
app.command()(serve)
app.command()(demo)
app.add_typer(ledger_app, name="ledger")
app.add_typer(token_app, name="token")
app.add_typer(approvals_app, name="approvals")
app.add_typer(actions_app, name="actions")
app.add_typer(autonomy_app, name="autonomy")
app.add_typer(audits_app, name="audits")
app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(mcp_app, name="mcp")
