"""Settings from the environment (PLAYBOOK_*), optionally from a TOML file named by PLAYBOOK_SETTINGS_FILE.

One class (pydantic-settings) for the worker, the CLI and the API. It fails closed: the environment is
production unless PLAYBOOK_ENVIRONMENT=dev is set (`playbook dev` sets it for itself), and outside dev
check() refuses placeholder secrets, an embedded SQLite database that several workers could not share,
and the embedded outbox email provider and built-in CRM unless they are opted into. Secrets are
SecretStr: '**********' in reprs, logs and messages; the code that hands one to its service calls reveal().
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError, field_serializer
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from engine.storage.db import default_url

PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev", "placeholder"}
PREFIX = "PLAYBOOK_"
SETTINGS_FILE = "PLAYBOOK_SETTINGS_FILE"


class SettingsError(Exception):
    """Settings that cannot be used; the message is one line and never contains a secret."""


def reveal(secret: SecretStr | None) -> str:
    """A secret setting's value, "" when unset: for the one place that hands it to its service."""
    return "" if secret is None else secret.get_secret_value()


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show nothing of it
        return "***"


# load_settings(environ=...) reads PLAYBOOK_* from this mapping instead of os.environ
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("playbook_environ", default=None)


class _MappingEnvironment(PydanticBaseSettingsSource):
    """PLAYBOOK_* variables of a given mapping (names case-insensitive, as pydantic-settings reads os.environ)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = {name.upper(): value for name, value in environ.items()}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.environ.get(PREFIX + field_name.upper()), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name: self.environ[PREFIX + name.upper()]
            for name in self.settings_cls.model_fields
            if PREFIX + name.upper() in self.environ
        }


def _settings_file(settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> PydanticBaseSettingsSource | None:
    name = next((v for k, v in environ.items() if k.upper() == SETTINGS_FILE), None)
    if not name:
        return None
    if not Path(name).is_file():
        raise SettingsError(f"{SETTINGS_FILE} names {name}, which is not a file")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=Path(name))
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{SETTINGS_FILE}: {name} is not valid TOML ({err})") from None


def _describe(err: ValidationError) -> str:
    problems = []
    for e in err.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown setting {name!r}")
        else:
            problems.append(f"{PREFIX}{name.upper()}: {e['msg']}")
    return "; ".join(problems)


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


def _is_time_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError; a path-like name a ValueError
        return False
    return True


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _is_ec_public_key(text: str) -> bool:
    """Whether text is an elliptic-curve public key as SendGrid shows it (base64 DER, without the PEM lines)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = f"-----BEGIN PUBLIC KEY-----\n{text.strip()}\n-----END PUBLIC KEY-----"
    try:
        return isinstance(load_pem_public_key(pem.encode()), ec.EllipticCurvePublicKey)
    except (ValueError, TypeError):
        return False


class Settings(BaseSettings):
    """Settings(...) reads like load_settings(): arguments, then PLAYBOOK_* variables, then the settings file."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid", hide_input_in_errors=True)

    environment: str = "production"  # dev | production (anything but dev gets the production checks)
    home: str = ".playbook"  # local state: SQLite files, logs
    library: str = "playbooks"
    # health scores (docs/health.md): the scorecards folder (None: `scorecards` beside the library folder; a folder
    # that does not exist means no scorecards) and the cron of the nightly recompute ("" turns it off)
    scorecards: str | None = None
    health_nightly: str = "0 2 * * *"

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_tls_cert: str | None = None  # mTLS client certificate (PEM file)
    temporal_tls_key: str | None = None
    temporal_tls_ca: str | None = None  # server CA, when not a public one
    temporal_api_key: SecretStr | None = None  # Temporal Cloud API key (implies TLS)
    task_queue: str = "playbooks"
    temporal_ui_port: int = 8233
    # Worker Versioning (docs/operations.md, "Deploying new engine code"): runs are pinned to the version that
    # started them; build_id defaults to the package version and a hash of the engine's code
    worker_versioning: bool = True
    deployment_name: str = "playbook-engine"
    build_id: str | None = None

    database_url: str | None = None  # default: SQLite under home

    email_provider: str = "outbox"  # outbox | sendgrid
    allow_outbox: bool = False  # outside dev, the outbox (which delivers nothing) only with this opt-in
    sendgrid_api_key: SecretStr | None = None
    sendgrid_host: str = "https://api.sendgrid.com"
    default_sender: str = "success@example.com"
    sendgrid_sandbox: bool = False  # SendGrid's sandbox mode: it validates every mail send and delivers nothing
    # verifies POST /webhooks/sendgrid: the Event Webhook's public key (base64 DER, as SendGrid shows it)
    sendgrid_webhook_public_key: str | None = None
    # where recipients reach the API (unsubscribe links): https://... in production; default in dev: the local API
    public_url: str | None = None
    # signs unsubscribe links (the same on every worker and API process; else a key in home, as inbox_secret)
    unsubscribe_secret: SecretStr | None = None
    # the secret it replaced, while links signed with it are still out there: read, never used to sign
    unsubscribe_previous_secret: SecretStr | None = None

    crm_provider: str = "builtin"  # builtin | hubspot
    allow_builtin_crm: bool = False  # outside dev, the built-in CRM only with this opt-in
    hubspot_token: SecretStr | None = None
    hubspot_base_url: str = "https://api.hubapi.com"
    # the unique company property that holds the engine's account id (the product's id, as events carry it)
    hubspot_account_id_property: str = "playbook_account_id"
    # HubSpot's search API allows 5 requests a second per account: segment pages and team loads stay under this
    hubspot_search_per_second: float = 4.0
    # HubSpot's daily API limit resets at midnight in the portal's time zone: a DAILY 429 waits until then
    hubspot_daily_reset_timezone: str = "UTC"
    # the company properties that get an account's health score and band (its first scorecard by id, docs/health.md)
    hubspot_health_score_property: str = "playbook_health_score"
    hubspot_health_band_property: str = "playbook_health_band"
    # verifies POST /webhooks/hubspot (v3 signatures): the HubSpot app's client secret
    hubspot_webhook_secret: SecretStr | None = None

    event_signing_secret: SecretStr | None = None  # HMAC-SHA256 secret shared with the product's backend (POST /events)
    inbox_secret: SecretStr | None = (
        None  # signs CSM inbox sessions; the same on every API process (else a key in home)
    )
    api_port: int = 8000

    # Temporal payloads (inputs, results, signals, history) encrypted with AES-256-GCM: "KEY_ID:BASE64_32_BYTES",
    # several separated by commas; the first encrypts, every one decrypts (rotation). Unset: payloads in clear.
    payload_keys: SecretStr | None = None
    # origins allowed to call the API's codec endpoint from a browser (the Temporal Web UI), comma-separated
    codec_cors_origins: str = "http://localhost:8233,http://127.0.0.1:8233"

    # the worker's Prometheus endpoint (Temporal SDK metrics and the engine's worker counters), host:port; unset: none
    worker_metrics_address: str | None = None
    # GET /metrics on the API asks for this bearer token when set
    metrics_token: SecretStr | None = None
    # OpenTelemetry traces of workflows and activities (temporalio's contrib interceptor; the "tracing" extra)
    tracing: bool = False

    log_format: str | None = None  # console | json; default: console in dev, json elsewhere
    max_concurrent_activities: int = 50

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:  # its text would quote the inputs, and a traceback is not a message
            raise SettingsError(_describe(err)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        sources = [init_settings, env_settings if environ is None else _MappingEnvironment(settings_cls, environ)]
        file = _settings_file(settings_cls, os.environ if environ is None else environ)
        return (*sources, file) if file is not None else tuple(sources)

    def __repr_args__(self) -> Any:  # the database URL's password, like the secrets, is not shown
        for name, value in super().__repr_args__():
            yield name, (_hide_password(value) if name == "database_url" and value else value)

    @field_serializer("database_url")
    def _database_url_shown(self, url: str | None) -> str | None:
        return _hide_password(url) if url else url

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated; the environment is not read again)."""
        return type(self).model_validate({**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @property
    def scorecards_folder(self) -> Path:
        """The scorecards folder: the setting, or `scorecards` beside the library folder."""
        if self.scorecards:
            return Path(self.scorecards)
        return Path(self.library).resolve().parent / "scorecards"

    @property
    def db_url(self) -> str:
        return self.database_url or default_url(self.home)

    @property
    def is_dev(self) -> bool:
        return self.environment == "dev"

    @property
    def logs_as_json(self) -> bool:
        return (self.log_format or ("console" if self.is_dev else "json")) == "json"

    def health_nightly_problem(self) -> str | None:
        """Why PLAYBOOK_HEALTH_NIGHTLY is not a cron expression (None: it is, or it is empty: no nightly recompute);
        checked at start-up, and by `playbook test` and `playbook diff`, whose scenarios recompute at its nights."""
        if not self.health_nightly:
            return None
        from engine.language.meaning import cron_problem

        why = cron_problem(self.health_nightly)
        return None if why is None else f"PLAYBOOK_HEALTH_NIGHTLY: {why}"

    def check(self) -> Settings:
        problems = []
        if (nightly := self.health_nightly_problem()) is not None:
            problems.append(nightly)
        if self.email_provider not in ("outbox", "sendgrid"):
            problems.append(f"PLAYBOOK_EMAIL_PROVIDER must be outbox or sendgrid, not {self.email_provider!r}")
        if self.crm_provider not in ("builtin", "hubspot"):
            problems.append(f"PLAYBOOK_CRM_PROVIDER must be builtin or hubspot, not {self.crm_provider!r}")
        if self.email_provider == "sendgrid" and reveal(self.sendgrid_api_key).lower() in PLACEHOLDERS:
            problems.append("PLAYBOOK_SENDGRID_API_KEY is missing or a placeholder")
        if self.crm_provider == "hubspot" and reveal(self.hubspot_token).lower() in PLACEHOLDERS:
            problems.append("PLAYBOOK_HUBSPOT_TOKEN is missing or a placeholder")
        if self.public_url is not None and not _is_http_url(self.public_url):
            problems.append(f"PLAYBOOK_PUBLIC_URL must be an http(s):// address with a host, not {self.public_url!r}")
        if self.sendgrid_webhook_public_key and not _is_ec_public_key(self.sendgrid_webhook_public_key):
            problems.append(
                "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key (paste the base64 text SendGrid shows)"
            )
        if self.payload_keys is not None:
            from .codec import parse_payload_keys

            try:
                parse_payload_keys(reveal(self.payload_keys))
            except ValueError as err:  # its message names a key id or an entry's position, never a key
                problems.append(str(err))
        if self.hubspot_search_per_second <= 0:
            problems.append(
                f"PLAYBOOK_HUBSPOT_SEARCH_PER_SECOND must be above 0, not {self.hubspot_search_per_second!r}"
            )
        if not _is_time_zone(self.hubspot_daily_reset_timezone):
            problems.append(
                "PLAYBOOK_HUBSPOT_DAILY_RESET_TIMEZONE must be an IANA time zone such as America/New_York, "
                f"not {self.hubspot_daily_reset_timezone!r}"
            )
        if self.worker_metrics_address is not None and not _is_host_port(self.worker_metrics_address):
            problems.append(
                "PLAYBOOK_WORKER_METRICS_ADDRESS must be host:port, such as 0.0.0.0:9464, "
                f"not {self.worker_metrics_address!r}"
            )
        if self.worker_versioning and (not self.deployment_name or "." in self.deployment_name):
            # Temporal writes a version as <deployment>.<build id>
            problems.append(
                f"PLAYBOOK_DEPLOYMENT_NAME must be a non-empty name without dots, not {self.deployment_name!r}"
            )
        if not self.is_dev:
            if self.db_url.startswith("sqlite"):
                problems.append("set PLAYBOOK_DATABASE_URL to a shared database (PostgreSQL), not SQLite")
            if self.email_provider == "outbox" and not self.allow_outbox:
                problems.append(
                    "the outbox email provider delivers nothing: set PLAYBOOK_EMAIL_PROVIDER=sendgrid "
                    "(and PLAYBOOK_SENDGRID_API_KEY), or PLAYBOOK_ALLOW_OUTBOX=true to keep emails in the outbox table"
                )
            if self.crm_provider == "builtin" and not self.allow_builtin_crm:
                problems.append(
                    "the built-in CRM keeps accounts, notes and tags in the engine's tables, not in your CRM: set "
                    "PLAYBOOK_CRM_PROVIDER=hubspot (and PLAYBOOK_HUBSPOT_TOKEN), or PLAYBOOK_ALLOW_BUILTIN_CRM=true"
                )
            # Unsubscribe links go out in every email and are followed days later, through any API process: they
            # need an address recipients reach, and a key that is the same everywhere and survives restarts.
            if not self.public_url:
                problems.append("set PLAYBOOK_PUBLIC_URL to the https:// address recipients reach the API at")
            elif not self.public_url.lower().startswith("https://"):
                problems.append("PLAYBOOK_PUBLIC_URL must be an https:// address (unsubscribe links are in emails)")
            if self.unsubscribe_secret is None:
                problems.append(
                    "set PLAYBOOK_UNSUBSCRIBE_SECRET (a long random value, the same for every worker and API process)"
                )
            for name in (
                "inbox_secret", "event_signing_secret", "temporal_api_key", "unsubscribe_secret",
                "unsubscribe_previous_secret", "hubspot_webhook_secret", "metrics_token",
            ):
                value = getattr(self, name)
                if value is not None and reveal(value).lower() in PLACEHOLDERS:
                    problems.append(f"{PREFIX}{name.upper()} is a placeholder")
        if problems:
            if not self.is_dev:
                which = (
                    f"PLAYBOOK_ENVIRONMENT={self.environment}"
                    if "environment" in self.model_fields_set
                    else "PLAYBOOK_ENVIRONMENT is not set, so production"
                )
                raise SettingsError(
                    "; ".join(problems) + f" ({which}; on a laptop use `playbook dev` or PLAYBOOK_ENVIRONMENT=dev)"
                )
            raise SettingsError("; ".join(problems))
        return self


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, then PLAYBOOK_* variables (of environ, default os.environ), then the file named by
    PLAYBOOK_SETTINGS_FILE (keys without the prefix, lower case), then the defaults. Raises SettingsError."""
    token = _ENVIRON.set(environ)
    try:
        return Settings(**overrides)
    finally:
        _ENVIRON.reset(token)
