"""``mandate policy``: test a bundle, sign it, compare two, activate one (or run it in shadow),
replay the recorded history with a candidate, show the active bundle.

`policy test`, `sign` and `diff` work on directories alone. `activate` and `replay` talk to a
running gateway when --url (or MANDATE_URL) is given, with a policy-admin token, through the
SDK; without it they work on the local database (--data-dir, --database-url) directly, as the
operator who holds it. `show` and `shadow` talk to a running gateway.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape

from gateway.cli.console import err, fail, show_progress, tabulate
from gateway.cli.local import DatabaseUrl, DataDir, open_database, settings_from
from gateway.cli.remote import DEFAULT_URL, AsJson, GatewayToken, GatewayUrl, ask
from gateway.wording import counted
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from gateway.client import MandateClient, MandateError

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help=(
        "Policy bundles: test one (Rego unit tests, decision cases, coverage), sign one, "
        "compare two, activate one (or run it in shadow), replay the recorded history with a "
        "candidate, show the active one. activate and replay talk to a running gateway when "
        "--url (or MANDATE_URL) is set, with a policy-admin token; otherwise they work on the "
        "local database directly."
    ),
    no_args_is_help=True,
)

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


class EngineName(StrEnum):
    """The Rego engines a bundle can be tested and replayed on."""

    regorus = "regorus"
    opa = "opa"


EngineChoice = Annotated[
    EngineName,
    typer.Option(
        "--engine",
        help="The Rego engine. regorus: the in-process engine the gateway decides with. opa: "
        "OPA's own evaluator (OPA v1.x, the opa extra of mandate); policy test then also checks "
        "that both engines "
        "decide alike (conformance).",
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
    from gateway.lifecycle.checks import check_bundle, describe
    from gateway.policy.bundle import BundleError, load_bundle

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
        raise fail(
            f"the bundle fails its checks: {counted(len(check.failures()), 'failure')}", code=1
        )
    return check


@policy_app.command("test")
def policy_test(
    directory: Annotated[
        Path,
        typer.Argument(metavar="[DIR]", help="The bundle directory.", show_default="./policies"),
    ] = Path("policies"),
    engine: EngineChoice = EngineName.regorus,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Test a bundle: its Rego unit tests, its decision cases, and which rules fired.

    Rego unit tests are the `test_` rules of rego/*_test.rego, run as `opa test` runs them.
    Decision cases (tests/*.yaml, format in policies/README.md) are decided exactly as the
    gateway decides: Casbin, the workflow's Rego at the autonomy level, the level-1 rule.
    Coverage (regorus) shows each rule with the number of cases that fired it and whether a
    unit test did. With --engine opa the tests and cases run on OPA's own evaluator, and both
    engines decide the tests, the cases and inputs generated around every threshold of the
    data: each disagreement fails, naming the rule and the input. Exit 0 when everything
    passes, 1 on any failure, 2 if the bundle or a case file cannot be used.
    """
    from gateway.lifecycle.checks import check_bundle, describe
    from gateway.lifecycle.conformance import describe_conformance
    from gateway.policy.bundle import BundleError, load_bundle

    _need(engine)
    try:
        bundle = load_bundle(directory)
    except BundleError as exc:
        raise fail(str(exc)) from None
    check = check_bundle(bundle, engine=engine.value)
    report = check.to_json()
    lines = describe(check)
    passed = check.passed
    if engine is EngineName.opa and check.usable:
        conformance = _conformance(bundle)
        report |= {"conformance": conformance.to_json(), "passed": passed and conformance.passed}
        verdict = lines.pop()
        lines += [*describe_conformance(conformance), ""]
        passed = passed and conformance.passed
        lines.append(
            f"{'PASS' if passed else 'FAIL'}{verdict[verdict.index(':') :]}, "
            f"{len(conformance.disagreements)} engine disagreements"
        )
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
    raise typer.Exit(0 if passed else (2 if not check.usable else 1))


def _need(engine: EngineName) -> None:
    """Exit 2 when the engine asked for is not installed here."""
    from gateway.policy.opa import INSTALL_HINT, opa_available

    if engine is EngineName.opa and not opa_available():
        raise fail(INSTALL_HINT)


def _conformance(bundle: Any) -> Any:
    """Both engines on the bundle; exit 2 if either cannot load it."""
    from gateway.lifecycle.conformance import check_conformance
    from gateway.policy.cases import CaseError
    from gateway.policy.rego import EngineError

    try:
        return check_conformance(bundle)
    except (EngineError, CaseError) as exc:
        raise fail(str(exc)) from None


def _policy_on(bundle: Any, engine: EngineName) -> Any:
    """A bundle's policy with its Rego on ``engine`` (for a local replay)."""
    from gateway.policy.active import ActivePolicy, build_policy
    from gateway.policy.opa import OpaEngine
    from gateway.policy.permit import Permitter

    if engine is EngineName.regorus:
        return build_policy(bundle)
    permitter = Permitter(bundle.casbin_model, bundle.casbin_policy)
    return ActivePolicy(bundle, permitter, OpaEngine(bundle))


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


def _gateway(url: str, token: str | None) -> MandateClient:
    """A policy admin's client of the gateway at --url: one attempt per call, and a minute for
    each answer (the gateway checks a bundle before it answers)."""
    from gateway.client import MandateClient

    if not token:
        raise fail("--url needs a policy-admin token (--token or MANDATE_TOKEN)")
    return MandateClient(url, token, timeout=60.0, retries=0)


def _answered(exc: MandateError) -> typer.Exit:
    """The gateway's problem answer as a message: exit 1 when it found the bundle bad (422) or
    the state refuses (409), else 2."""
    for item in (exc.problem.errors or []) if exc.problem else []:
        err.print(f"  {escape(item.field)}: {escape(item.message)}", highlight=False)
    code = 1 if exc.status in (409, 422) else 2
    return fail(f"the gateway answered {exc.status}: {exc}", code=code)


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
    mode: Literal["active", "shadow"] = "shadow" if shadow else "active"
    check = _checked(directory, report=False)
    bundle = check.bundle
    signer = None
    if url:
        from gateway.client import MandateError, Unreachable

        with _gateway(url, token) as client:
            files = _bundle_texts(directory)
            signatures = _signatures_text(directory)
            try:
                answer = client.activate_policy(files, reason, mode, signatures=signatures)
            except Unreachable as exc:
                raise fail(f"cannot reach the gateway at {url}: {exc.__cause__ or exc}") from None
            except MandateError as exc:
                raise _answered(exc) from None
        changed, seq, who = answer.changed, answer.policy.ledger_seq, "the gateway"
        signer = answer.policy.signature
    else:
        from gateway.db.connect import open_ledger
        from gateway.lifecycle.slots import write_slot

        settings = settings_from(data_dir, database_url)
        signer = _vouched(directory, bundle, settings.bundle_key)
        engine = open_database(settings)
        try:
            with open_ledger(settings, engine) as ledger:
                written = write_slot(
                    engine,
                    ledger,
                    mode,
                    bundle,
                    by=_operator(),
                    reason=reason,
                    validation=check.summary(),
                    signer=signer,
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
            f"bundle {bundle.digest[:12]} ({counted(len(bundle.files), 'file')}, workflows "
            f"{', '.join(sorted(bundle.workflows))}; {summary['rego_tests']['passed']} Rego "
            f"tests and {summary['cases']['passed']} decision cases passed"
            + ("" if signer is None else f"; signed with key {signer.key_id or '(no id)'}")
            + f") is now the {mode} bundle in {who}: policy entry #{seq}",
            highlight=False,
        )
    print(bundle.digest)


def _signatures_text(directory: Path) -> str | None:
    """A bundle directory's ``.signatures.json``, as the upload carries it (None: unsigned)."""
    from gateway.policy.signing import SignatureError, read_signatures

    try:
        signatures = read_signatures(directory)
    except SignatureError as exc:
        raise fail(str(exc)) from None
    return None if signatures is None else signatures.decode("utf-8", errors="replace")


def _vouched(directory: Path, bundle: Any, key_path: Path | None) -> Any:
    """Who signed the bundle in ``directory``, checked with the bundle key as a gateway checks
    it (None without a key); exit 1 when the signature does not vouch for it, 2 when the key
    cannot be used."""
    from gateway.policy.signing import (
        SignatureError,
        read_public_key,
        read_signatures,
        verify_files,
    )

    if key_path is None:
        return None
    try:
        key = read_public_key(key_path)
    except SignatureError as exc:
        raise fail(str(exc)) from None
    try:
        return verify_files(bundle.files, read_signatures(directory), key)
    except SignatureError as exc:
        raise fail(f"{directory}: {exc}", code=1) from None


@policy_app.command("sign")
def policy_sign(
    directory: BundleDir,
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            help="The signing key: an RSA or ECDSA (P-256) private key in PEM, unencrypted, as "
            "`opa sign --signing-key` takes.",
            show_default=False,
        ),
    ],
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            help="The key's name, written as the JWT's `kid`; the gateway records it in the "
            "`policy` ledger entry.",
            show_default=False,
        ),
    ] = None,
    alg: Annotated[
        str | None,
        typer.Option(
            "--alg",
            help="RS256 (an RSA key) or ES256 (a P-256 key).",
            show_default="the key's kind",
        ),
    ] = None,
) -> None:
    """Sign a bundle: write DIR/.signatures.json in OPA's format, as `opa sign` does.

    The file holds one JWT whose `files` claim lists every file of the bundle with its SHA-256
    (data.json hashed as OPA hashes it, so OPA and its tooling verify it too). It is a hidden
    file, not part of the bundle or its digest: activation sends it beside the files, and a
    gateway with a bundle key (MANDATE_BUNDLE_KEY, the public key) activates only bundles
    whose every file is the one signed. Sign again after any change. Prints the bundle's
    digest. Exit 2 if the bundle or the key cannot be used.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.signing import (
        SIGNATURES_FILE,
        SignatureError,
        load_private_key,
        sign_files,
    )

    try:
        bundle = load_bundle(directory)
        pem = key.read_bytes()
    except BundleError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"--key {key}: cannot read: {exc.strerror or exc}") from None
    try:
        private = load_private_key(pem, f"--key {key}")
        algorithm = alg or ("RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256")
        signatures = sign_files(bundle.files, private, algorithm=algorithm, key_id=key_id)
    except SignatureError as exc:
        raise fail(str(exc)) from None
    target = directory / SIGNATURES_FILE
    try:
        target.write_bytes(signatures)
    except OSError as exc:
        raise fail(f"{target}: cannot write: {exc.strerror or exc}") from None
    err.print(
        f"signed the {counted(len(bundle.files), 'file')} of bundle {bundle.digest[:12]} with "
        f"{algorithm}" + (f" key {key_id}" if key_id else "") + f": {target}",
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
    engine: EngineChoice = EngineName.regorus,
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

    With --url, the gateway replays (policy-admin token) with its own engine; without it,
    this process reads the local database, and --engine opa replays on OPA's own evaluator
    (with no candidate: does OPA decide the history as it was decided?). Exit 0, or 1 with
    --fail-on-change when a verdict would change; 2 if the candidate or --since cannot be used.
    """
    from gateway.lifecycle.replay import parse_since

    try:
        since_stamp = None if since is None else parse_since(since)
    except ValueError:
        raise fail(f"--since {since!r}: a date (2026-11-01) or an ISO time") from None
    if url and engine is not EngineName.regorus:
        raise fail("--engine opa replays the local database; through --url the gateway replays")
    _need(engine)
    if url:
        report = _replay_remote(url, token, candidate, since, examples)
    else:
        report = _replay_local(candidate, since_stamp, examples, data_dir, database_url, engine)
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
    engine_name: EngineName = EngineName.regorus,
) -> dict[str, Any]:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.lifecycle.replay import Replayer
    from gateway.lifecycle.slots import BundleStore
    from gateway.policy.bundle import BundleError, load_bundle
    from ledger.store import Ledger

    policy = None
    if candidate is not None:
        try:
            policy = _policy_on(load_bundle(candidate), engine_name)
        except BundleError as exc:
            raise fail(str(exc)) from None
        except Exception as exc:  # the Rego does not load
            raise fail(f"{candidate}: {exc}") from None
    settings = settings_from(data_dir, database_url)
    engine = open_database(settings, create=False, migrate=False)
    store = BundleStore(engine)
    try:
        ledger = Ledger(engine, origin=settings.ledger_origin)  # read only: no writer
        replayer = Replayer(
            ledger,
            engine,
            policy,
            recorded=lambda digest: _policy_on(store.bundle(digest), engine_name),
            since=since,
            examples=examples,
        )
        with show_progress("replaying") as bar:
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
    from gateway.client import MandateError, Unreachable

    files = None if candidate is None else _bundle_texts(candidate)
    with _gateway(url, token) as client, show_progress("replaying") as bar:
        task = bar.add_task("replaying", total=None)
        try:
            return client.replay_policy(
                files,
                since=since,
                examples=examples,
                progress=lambda scanned, total: bar.update(
                    task, completed=scanned, total=total or None
                ),
            )
        except Unreachable as exc:
            raise fail(f"the replay through {url} failed: {exc.__cause__ or exc}") from None
        except MandateError as exc:
            raise (fail(str(exc)) if exc.status is None else _answered(exc)) from None


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
        f"Same reasons worded otherwise: {report.get('messages_changed', 0):,}; warnings that "
        f"would change: {report.get('warnings_changed', 0):,}"
        + "".join(f", {_rule_text(r)}" for r in report.get("warning_rules", [])),
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
        lines.append(tabulate([["WORKFLOW", "CASE TYPE", "CHANGED", "FROM → TO", "RULES"], *rows]))
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
    if report.get("reason_changes"):
        lines += ["", "Same verdict, other reasons (codes the candidate adds +, drops -):"]
        for c in report["reason_changes"]:
            named = ", ".join(d["action_id"] for d in c["decisions"])
            more = c["count"] - len(c["decisions"])
            lines.append(
                f"  {c['workflow']}/{c['case_type']} {c['verdict']}: "
                f"{_codes_text(c['added'], c['removed'])}: {c['count']:,}"
            )
            lines.append(f"      {named}" + (f" and {more:,} more" if more else ""))
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
    if report.get("erased"):
        lines.append(
            f"{report['erased']} decisions were not replayed: their personal data was erased "
            f"(decision seqs {report['erased_seqs']})."
        )
    return lines


def _rule_text(rule: dict[str, Any]) -> str:
    parts = []
    if rule["added"]:
        parts.append(f"+{rule['code']} {rule['added']}")
    if rule["removed"]:
        parts.append(f"-{rule['code']} {rule['removed']}")
    return ", ".join(parts)


def _codes_text(added: list[str], removed: list[str]) -> str:
    """Reason codes added and removed: ``+over_claim_limit -over_hard_limit``."""
    return " ".join([*(f"+{c}" for c in added), *(f"-{c}" for c in removed)]) or "-"


@policy_app.command("diff")
def policy_diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="The bundle directory before.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="The bundle directory after.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Show what differs from bundle A to bundle B, for a review before activating B.

    Rules: each Rego rule (unit tests left out) named by package, name and reason code, added
    (+), removed (-) or changed (~) in what it says (layout and comments do not count).
    Data: each JSON path of data.json whose value differs, old → new. Case types: added,
    removed, or their initial level, quorum or other settings changed. Files: every path
    added, removed or changed. Exit 0 when the bundles are the same files, 1 when they
    differ, 2 if one cannot be used.
    """
    from gateway.lifecycle.diff import diff_bundles
    from gateway.policy.bundle import BundleError, load_bundle
    from gateway.policy.rego import EngineError

    try:
        diff = diff_bundles(load_bundle(a), load_bundle(b))
    except (BundleError, EngineError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(diff.to_json(), indent=2))
    else:
        print("\n".join(_diff_lines(diff, a, b)))
    raise typer.Exit(0 if diff.same else 1)


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _diff_lines(diff: Any, a: Path, b: Path) -> list[str]:
    """The differences for people."""
    first, second = diff.digests
    lines = [f"A {first[:12]} ({a}) → B {second[:12]} ({b})"]
    if diff.same:
        return [*lines, "The same files: nothing differs."]
    rules = [[_MARK[r.change], r.package, r.name, r.code or "", r.where] for r in diff.rules]
    lines += ["", "Rules (Rego; + added, - removed, ~ changed):"]
    lines += ["  " + line for line in tabulate(rules).splitlines()] if rules else ["  (none)"]
    lines += ["", "Data (data.json):"]
    for d in diff.data:
        if d.change == "added":
            lines.append(f"  + {d.path}: {_value(d.new)}")
        elif d.change == "removed":
            lines.append(f"  - {d.path}: {_value(d.old)}")
        else:
            lines.append(f"  ~ {d.path}: {_value(d.old)} → {_value(d.new)}")
    if not diff.data:
        lines.append("  (none)")
    lines += ["", "Case types:"]
    for c in diff.case_types:
        settings = ", ".join(
            f"{name} {_value(old)} → {_value(new)}" for name, (old, new) in c.settings.items()
        )
        lines.append(
            f"  {_MARK[c.change]} {c.workflow}/{c.case_type}"
            + (f": {settings}" if settings else "")
        )
    if not diff.case_types:
        lines.append("  (none)")
    lines += ["", "Files:"] + [f"  {_MARK[change]} {path}" for change, path in diff.files]
    return lines


@policy_app.command("show")
def policy_show(
    token: GatewayToken,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Show the active bundle: its digest, who activated it and why, who signed it, its
    workflows and case types with the level in force, and its files.

    Through a running gateway (GET /v1/policies/active and /v1/autonomy), with the token of a
    policy admin, an auditor or a governor. The level is the one in force (a case type the
    gateway has not decided yet shows its initial level); the initial level and the quorum
    are the bundle's.
    """
    from gateway.policy.bundle import BundleError, bundle_from_files

    def read(client: MandateClient) -> tuple[Any, Any]:
        return client.active_policy(content=True), client.autonomy()

    view, levels = ask(url, token, read)
    files = {f.path: (f.content or "").encode("utf-8") for f in view.files}
    try:
        bundle = bundle_from_files(files, Path(f"bundle {view.digest[:12]}"))
    except BundleError as exc:
        raise fail(str(exc)) from None
    in_force = {(v.workflow, v.case_type): v for v in levels}
    case_types: list[dict[str, Any]] = []
    for name, workflow in sorted(bundle.workflows.items()):
        for case_type in sorted(workflow.case_types):
            level = in_force.get((name, case_type))
            case_types.append(
                {
                    "workflow": name,
                    "case_type": case_type,
                    "level": level.level if level else workflow.initial_level(case_type),
                    "level_name": level.name if level else None,
                    "initial_level": workflow.initial_level(case_type),
                    "quorum": workflow.quorum(case_type),
                }
            )
    if as_json:
        shown = view.model_dump(mode="json")
        shown["files"] = [{k: v for k, v in f.items() if k != "content"} for f in shown["files"]]
        print(json.dumps({"policy": shown, "case_types": case_types}, indent=2))
        return
    signed = view.signature
    lines = [
        f"Active bundle {view.digest}",
        f"  activated {view.activated_at} by {view.activated_by} (policy entry "
        f"#{view.ledger_seq}): {view.reason}",
        "  not signed (the gateway had no bundle key when it was activated)"
        if signed is None
        else f"  signed with key {signed.key_id or '(no key id)'} ({signed.algorithm}; key "
        f"SHA-256 {signed.key_sha256[:16]}…)",
        "",
        tabulate(
            [
                ["WORKFLOW", "CASE TYPE", "LEVEL", "INITIAL", "QUORUM"],
                *(
                    [
                        c["workflow"],
                        c["case_type"],
                        f"{c['level']} {c['level_name'] or ''}".strip(),
                        str(c["initial_level"]),
                        str(c["quorum"]),
                    ]
                    for c in case_types
                ),
            ]
        ),
        "",
        tabulate(
            [
                ["FILE", "BYTES", "SHA-256"],
                *([f.path, str(f.bytes), f.sha256] for f in view.files),
            ]
        ),
    ]
    print("\n".join(lines))


shadow_app = typer.Typer(
    help=(
        "Shadow mode: run a candidate bundle beside the active one (every new proposal decided "
        "by both, only the active verdict enforced), see where they disagree, stop it. Talks "
        "to a running gateway (--url) with a token (--token or MANDATE_TOKEN): a policy "
        "admin's to start or stop, an auditor's or governor's will do to look."
    ),
    no_args_is_help=True,
)
policy_app.add_typer(shadow_app, name="shadow")


@shadow_app.command("start")
def shadow_start(
    directory: BundleDir,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).", show_default=False)],
    token: GatewayToken,
    url: GatewayUrl = DEFAULT_URL,
) -> None:
    """Check a bundle and run it in shadow beside the active one (as `policy activate
    --shadow --url`): it must pass its checks, and be signed when the gateway has a bundle
    key. Exit 1 if the gateway refuses it, 2 if it cannot be used."""
    policy_activate(
        directory, reason, shadow=True, url=url, token=token, data_dir=None, database_url=None
    )


@shadow_app.command("status")
def shadow_status(
    token: GatewayToken,
    limit: Annotated[
        int, typer.Option(help="How many of the latest disagreements to read.", min=1, max=500)
    ] = 100,
    url: GatewayUrl = DEFAULT_URL,
    as_json: AsJson = False,
) -> None:
    """Show the shadow bundle and where it disagrees with the active one.

    The counts cover every proposal since the shadow started; the lists, the latest --limit
    disagreements: verdict changes (from → to, with both sides' reason codes), the same
    verdict for other reasons (grouped by the codes the shadow adds + and drops -, with the
    actions named), and the shadow's failures. Without a running shadow, the last one's
    disagreements.
    """
    view = ask(url, token, lambda client: client.shadow_policy(limit=limit))
    if as_json:
        print(json.dumps(view.model_dump(mode="json"), indent=2))
        return
    print("\n".join(_shadow_lines(view, limit)))


def _shadow_lines(view: Any, limit: int) -> list[str]:
    """The shadow's comparison for people."""
    shadow = view.shadow
    if shadow is None:
        lines = ["No shadow bundle runs."]
        if not view.items:
            return lines
        lines.append("The last shadow's disagreements:")
    else:
        lines = [
            f"Shadow bundle {shadow.digest[:12]} beside active {view.active_digest[:12]}: "
            f"started {shadow.activated_at} by {shadow.activated_by} (policy entry "
            f"#{shadow.ledger_seq}): {shadow.reason}",
            f"Proposals decided since: {view.decided_while_running:,}",
        ]
    lines.append(
        f"Disagreements: {view.disagreements:,}; verdict changes: {view.verdict_changes:,}; "
        f"same verdict for other reasons: {view.reasons_changed:,}; the shadow failed or "
        f"refused: {view.errors:,}"
    )
    changed = [i for i in view.items if i.verdict_changed and not i.shadow.error]
    if changed:
        lines += ["", "Verdict changes (active → shadow):"]
        for i in changed:
            was = ", ".join(r.code for r in i.active.reasons) or "-"
            now = ", ".join(r.code for r in i.shadow.reasons) or "-"
            lines.append(
                f"  {i.active.verdict} → {i.shadow.verdict}  {i.action_id} ({i.workflow}/"
                f"{i.case_type}, level {i.level}, {i.decided_at}): was [{was}], now [{now}]"
            )
    same = [i for i in view.items if not i.verdict_changed]
    if same:
        lines += ["", "Same verdict, other reasons (codes the shadow adds +, drops -):"]
        groups: dict[tuple[str, str, str, str], list[str]] = {}
        for i in same:
            key = (
                i.workflow,
                i.case_type,
                i.active.verdict,
                _codes_text(i.codes_added, i.codes_removed),
            )
            groups.setdefault(key, []).append(i.action_id)
        for (workflow, case_type, verdict, codes), actions in groups.items():
            lines.append(f"  {workflow}/{case_type} {verdict}: {codes}: {len(actions)}")
            lines.append(f"      {', '.join(actions)}")
    failed = [i for i in view.items if i.shadow.error]
    if failed:
        lines += ["", "The shadow failed or refused:"]
        lines += [
            f"  {i.active.verdict} → {i.shadow.verdict}  {i.action_id} ({i.workflow}/"
            f"{i.case_type}): {i.shadow.error}"
            for i in failed
        ]
    if view.next_before is not None:
        lines += ["", f"(the latest {limit} disagreements; --limit for more, --json in full)"]
    return lines


@shadow_app.command("stop")
def shadow_stop(
    token: GatewayToken,
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "",
    url: GatewayUrl = DEFAULT_URL,
) -> None:
    """Stop the shadow bundle (a `policy` ledger entry, mode shadow-stopped); its
    disagreements stay listed by `policy shadow status`. Exit 1 when no shadow runs."""
    view = ask(url, token, lambda client: client.stop_shadow(reason))
    err.print(
        f"the shadow bundle stopped; its {view.disagreements:,} disagreements stay listed "
        "(mandate policy shadow status)",
        highlight=False,
    )
