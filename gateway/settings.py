"""Settings: environment variables ``MANDATE_*``, then ``mandate.toml``, then these defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ledger.database import ANSWER_GRACE, Timeouts

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything a gateway process or a CLI command needs to find its state."""

    model_config = SettingsConfigDict(
        env_prefix="MANDATE_", toml_file="mandate.toml", extra="ignore"
    )

    data_dir: Path = Field(Path(".mandate"), description="where the SQLite file and key live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in the data dir"
    )
    database_schema: str | None = Field(None, description="PostgreSQL schema (search path)")
    # Every wait on a PostgreSQL server is bounded (ledger.database.Timeouts): one that stops
    # answering is a 503 that says so, not a request (and the ledger's writer) held for good.
    database_connect_timeout: float = Field(
        Timeouts.connect,
        gt=0,
        description="PostgreSQL: seconds a connection attempt may take (libpq waits 2 s at least)",
    )
    database_statement_timeout: float = Field(
        Timeouts.statement,
        gt=0,
        description="PostgreSQL: seconds a statement may run before the server cancels it; "
        f"with no answer at all, the gateway stops waiting {ANSWER_GRACE:g} s later (a "
        "statement, a commit) and drops the connection",
    )
    database_lock_timeout: float = Field(
        Timeouts.lock,
        gt=0,
        description="PostgreSQL: seconds a statement may wait for a lock, the ledger's append "
        "lock among them",
    )
    database_idle_in_transaction_timeout: float = Field(
        Timeouts.idle_in_transaction,
        gt=0,
        description="PostgreSQL: the server ends a session that sits that many seconds in a "
        "transaction, freeing its locks (a gateway that froze mid-append holds no one up)",
    )
    database_keepalive: float = Field(
        Timeouts.keepalive,
        ge=1,
        description="PostgreSQL: TCP keepalive probes after that many silent seconds, then as "
        "often; 3 unanswered (or data unacknowledged 4 times as long) drop the connection",
    )
    auto_migrate: bool = Field(
        True,
        description="on start, bring the database's schema up to date (Alembic migrations); "
        "false: refuse to start on a database behind this version until `mandate db upgrade` "
        "has run (for deployments that migrate in a step of their own)",
    )
    policies: Path = Field(Path("policies"), description="the active policy bundle")
    host: str = Field("127.0.0.1", description="the address `mandate serve` listens on")
    port: int = Field(8080, ge=1, le=65535, description="the port `mandate serve` listens on")
    ledger_origin: str = Field(
        "mandate.local/ledger", description="names this log in every checkpoint"
    )
    checkpoint_every: int = Field(1000, ge=1, description="sign a checkpoint every N entries")
    checkpoint_interval: float = Field(
        60.0, gt=0, description="...or every T seconds, whichever comes first"
    )
    commit_delay_ms: float = Field(
        1.0,
        ge=0,
        le=100,
        description="while proposals come concurrently, the ledger waits this long to commit "
        "more of them at once (0: never waits)",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies get 413")
    max_json_depth: int = Field(
        32, ge=2, description="JSON bodies nested deeper than this (arrays, objects) get 422"
    )
    # Above what one process decides (bench gateway_http drives one token as fast as it goes),
    # so the default stops a runaway client without throttling honest load.
    rate_limit_per_second: float = Field(
        5000.0,
        ge=0,
        description="requests per second per token, in this process (0: no limit); over it, "
        "429 with Retry-After",
    )
    rate_limit_burst: int = Field(
        10000, ge=1, description="requests a token may send at once before the rate applies"
    )
    opa_url: str | None = Field(
        None, description="evaluate Rego on this OPA server instead of in-process regorus"
    )
    webhooks: dict[str, str] = Field(
        default_factory=dict,
        description="webhook URL per executor token name or per workflow (executor wins); "
        "actions with none are carried out by the executor itself (callback)",
    )
    webhook_secret: str | None = Field(
        None, description="HMAC key for Mandate-Signature; default: <data dir>/webhook-secret"
    )
    public_url: str | None = Field(
        None,
        description="how people reach this gateway (links in notifications); default: "
        "http://<host>:<port>",
    )
    notify_url: str | None = Field(
        None, description="Slack-compatible incoming webhook told of every held action"
    )
    dispatch_attempts: int = Field(6, ge=1, description="webhook attempts before giving up")
    dispatch_backoff: float = Field(0.5, gt=0, description="first retry delay, doubling")
    dispatch_timeout: float = Field(5.0, gt=0, description="seconds per webhook attempt")
    dispatch_lease: float = Field(
        30.0, gt=0, description="seconds a dispatch attempt holds its intent before a retry"
    )
    sweep_interval: float = Field(5.0, gt=0, description="how often expired approvals close")
    policy_poll_interval: float = Field(
        0.5, gt=0, description="how often a process looks for a newly activated policy bundle"
    )
    max_bundle_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="larger bodies of POST /v1/policies and /v1/policies/replay get 413",
    )
    signing_key: Path | None = Field(
        None, description="Ed25519 key file (mode 0600); default: <data dir>/ledger-signing-key.pem"
    )
    bundle_key: Path | None = Field(
        None,
        description="PEM public key (RSA or ECDSA) of whoever signs policy bundles (`mandate "
        "policy sign`, `opa sign`); set, a bundle is activated only with a signature of it that "
        "covers every file (.signatures.json)",
    )
    witness_keys: Path | None = Field(
        None,
        description="file of the witnesses' verifier key lines (`python -m ledger witness "
        "keygen` prints one), one a line; the gateway keeps cosignatures by these witnesses "
        "only; unset: it takes none",
    )
    subject_key: Path | None = Field(
        None,
        description="the secret that names data subjects in the ledger (mode 0600; back it up "
        "with the signing key); default: <data dir>/ledger-subject-key",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="the least severe log records written (INFO: one line per decision, "
        "WARNING: only what went wrong, failing closed among it)",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text for people; json: one JSON object per line (timestamp, level, "
        "logger, message and the record's fields) for a log shipper",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        # MANDATE_LOG_LEVEL=info is as clear as INFO.
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        # A lease shorter than an attempt would let this very process claim the intent again
        # while the first attempt is still in flight.
        if self.dispatch_lease <= self.dispatch_timeout:
            raise ValueError(
                f"dispatch_lease ({self.dispatch_lease} s) must be longer than dispatch_timeout "
                f"({self.dispatch_timeout} s)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments win over the environment, which wins over ``mandate.toml``."""
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @property
    def database(self) -> str:
        """The database URL in effect."""
        return self.database_url or f"sqlite:///{self.data_dir / 'mandate.db'}"

    @property
    def database_timeouts(self) -> Timeouts:
        """The bounds of every wait on a PostgreSQL server."""
        return Timeouts(
            connect=self.database_connect_timeout,
            statement=self.database_statement_timeout,
            lock=self.database_lock_timeout,
            idle_in_transaction=self.database_idle_in_transaction_timeout,
            keepalive=self.database_keepalive,
        )

    @property
    def key_path(self) -> Path:
        """The signing key file in effect."""
        return self.signing_key or self.data_dir / "ledger-signing-key.pem"

    @property
    def subject_key_path(self) -> Path:
        """The subject key file in effect (``ledger.sealing``: who sealed values belong to)."""
        return self.subject_key or self.data_dir / "ledger-subject-key"

    @property
    def webhook_secret_path(self) -> Path:
        """Where the webhook HMAC key is kept when it is not given in the environment."""
        return self.data_dir / "webhook-secret"
