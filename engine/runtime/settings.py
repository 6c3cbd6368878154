"""Settings from the environment (PLAYBOOK_*), optionally from a TOML file named by PLAYBOOK_SETTINGS_FILE.

One class for the worker, the CLI and the API. Outside dev it refuses to start with placeholder
secrets or an embedded SQLite database that several workers could not share.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.storage.db import default_url

PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev", "placeholder"}


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    environment: str = "dev"  # dev | production
    home: str = ".playbook"  # local state: SQLite files, logs
    library: str = "playbooks"

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_tls_cert: str | None = None  # mTLS client certificate (PEM file)
    temporal_tls_key: str | None = None
    temporal_tls_ca: str | None = None  # server CA, when not a public one
    temporal_api_key: str | None = None  # Temporal Cloud API key (implies TLS)
    task_queue: str = "playbooks"
    temporal_ui_port: int = 8233

    database_url: str | None = None  # default: SQLite under home

    email_provider: str = "outbox"  # outbox | sendgrid
    sendgrid_api_key: str | None = None
    sendgrid_host: str = "https://api.sendgrid.com"
    default_sender: str = "success@example.com"

    crm_provider: str = "builtin"  # builtin | hubspot
    hubspot_token: str | None = None
    hubspot_base_url: str = "https://api.hubapi.com"

    event_signing_secret: str | None = None  # HMAC-SHA256 secret shared with the product's backend (POST /events)
    inbox_secret: str | None = None  # signs CSM inbox sessions; the same on every API process (else a key in home)
    api_port: int = 8000

    log_format: str | None = None  # console | json; default: console in dev, json elsewhere
    max_concurrent_activities: int = 50

    @property
    def db_url(self) -> str:
        return self.database_url or default_url(self.home)

    @property
    def is_dev(self) -> bool:
        return self.environment == "dev"

    @property
    def logs_as_json(self) -> bool:
        return (self.log_format or ("console" if self.is_dev else "json")) == "json"

    def check(self) -> "Settings":
        problems = []
        if self.email_provider not in ("outbox", "sendgrid"):
            problems.append(f"PLAYBOOK_EMAIL_PROVIDER must be outbox or sendgrid, not {self.email_provider!r}")
        if self.crm_provider not in ("builtin", "hubspot"):
            problems.append(f"PLAYBOOK_CRM_PROVIDER must be builtin or hubspot, not {self.crm_provider!r}")
        if self.email_provider == "sendgrid" and (self.sendgrid_api_key or "").lower() in PLACEHOLDERS:
            problems.append("PLAYBOOK_SENDGRID_API_KEY is missing or a placeholder")
        if self.crm_provider == "hubspot" and (self.hubspot_token or "").lower() in PLACEHOLDERS:
            problems.append("PLAYBOOK_HUBSPOT_TOKEN is missing or a placeholder")
        if not self.is_dev:
            if self.db_url.startswith("sqlite"):
                problems.append("outside dev, set PLAYBOOK_DATABASE_URL to a shared database (PostgreSQL)")
            if self.inbox_secret is not None and self.inbox_secret.lower() in PLACEHOLDERS:
                problems.append("PLAYBOOK_INBOX_SECRET is a placeholder")
            if self.event_signing_secret is not None and self.event_signing_secret.lower() in PLACEHOLDERS:
                problems.append("PLAYBOOK_EVENT_SIGNING_SECRET is a placeholder")
            if self.temporal_api_key is not None and self.temporal_api_key.lower() in PLACEHOLDERS:
                problems.append("PLAYBOOK_TEMPORAL_API_KEY is a placeholder")
        if problems:
            raise SettingsError("; ".join(problems))
        return self


def _coerce(value: str, annotation: Any) -> Any:
    text = str(annotation)
    if "bool" in text:
        return value.strip().lower() in ("1", "true", "yes", "on")
    if "int" in text:
        return int(value)
    return value


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    file = env.get("PLAYBOOK_SETTINGS_FILE")
    if file:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        values.update({k: v for k, v in data.items() if k in {f.name for f in fields(Settings)}})
    for f in fields(Settings):
        raw = env.get(f"PLAYBOOK_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _coerce(raw, f.type)
    return Settings(**values)
