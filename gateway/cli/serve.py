"""``mandate serve`` and ``mandate demo``: start a gateway here, and show one at work.

The demo itself is ``gateway.cli.demo``; it is imported when the command runs, as the gateway
is: ``mandate --help`` should not pay for FastAPI and the policy engines.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.console import err, fail
from gateway.cli.local import DatabaseUrl, DataDir, Policies, open_database, settings_from
from ledger.errors import LedgerError

__all__ = ["demo", "serve"]


def serve(
    host: Annotated[
        str | None,
        typer.Option(help="The address to listen on (MANDATE_HOST).", show_default="127.0.0.1"),
    ] = None,
    # The settings read MANDATE_PORT (and MANDATE_HOST), so that a bad value is their one-line
    # error, as every setting's is, not click's usage box.
    port: Annotated[
        int | None, typer.Option(help="The port to listen on (MANDATE_PORT).", show_default="8080")
    ] = None,
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

    The checkpoint signing key and the subject key (which names data subjects in the ledger)
    are made on first start (mode 0600).
    """
    import logging
    import os

    import uvicorn

    from gateway.db.connect import signing_key, subject_key
    from gateway.lifecycle.activation import check_start
    from gateway.logs import configure_logging
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.server.app import create_app
    from gateway.server.serving import WORKER_FACTORY, export_settings

    settings = settings_from(data_dir, database_url, policies=policies, host=host, port=port)
    try:
        bundle = load_bundle(settings.policies)
    except BundleError as exc:
        raise fail(f"{exc}") from None
    # What would stop the gateway from becoming ready is said here, plainly, before the banner
    # (the app checks again when it starts: another process may change things meanwhile).
    open_database(settings).dispose()
    try:
        signing_key(settings)
        subject_key(settings)
    except LedgerError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"ledger key in {settings.key_path.parent}: {exc.strerror or exc}") from None
    engine = open_database(settings)
    try:
        check_start(settings, engine)  # with a bundle key: the key, and what the start signs in
    except BundleError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.dispose()
    _check_port_free(settings.host, settings.port)
    url = f"http://{settings.host}:{settings.port}"
    where = settings.database_url or f"SQLite in {settings.data_dir}/"
    configure_logging(settings)
    if settings.log_format == "json":
        # A log shipper reads stderr: the banner is one record like every other line.
        logging.getLogger("mandate").info(
            "Mandate gateway on %s",
            url,
            extra={"url": url, "ledger": where, "bundle": bundle.digest, "workers": workers},
        )
    else:
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
        log_config=None,  # its loggers write through ours (configure_logging)
    )


def _check_port_free(host: str, port: int) -> None:
    """Refuse (exit 2) an address another process listens on, before the banner announces a
    gateway there. Bound as uvicorn binds it (SO_REUSEADDR), then let go for uvicorn to take."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--host)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise fail(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another gateway "
                "running there? Stop it, or pick another port with --port (MANDATE_PORT)"
            ) from None


def demo(
    actions: Annotated[int, typer.Option(help="How many proposals to send.", min=1)] = 200,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="MANDATE_URL",
            help="A running gateway to send the proposals to.",
            show_default="the one on 127.0.0.1:8080 if it answers, else one started here",
        ),
    ] = None,
    data_dir: DataDir = None,
    policies: Policies = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Send a realistic mix of proposals from both workflows and show what Mandate did.

    Run it from the folder where `make run` runs (it makes tokens in that data dir), then read
    the summary: verdicts by case type, the reasons, latency, and the verified ledger.
    """
    from gateway.cli.demo import run_demo

    settings = settings_from(data_dir, database_url, policies=policies)
    result = run_demo(settings, url=url, actions=actions, console=err)
    raise typer.Exit(0 if result.verified else 1)
