"""Settings fail closed: production unless told dev, refusals in one line, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import cli
from engine.runtime import connect as rt
from engine.runtime.settings import Settings, SettingsError, load_settings, reveal
from tests.paths import PLAYBOOKS, ROOT

POSTGRES = "postgresql+psycopg://playbooks:db-password-31337@db.internal/playbooks"
SECRETS = {
    "PLAYBOOK_SENDGRID_API_KEY": "SG.sendgrid-secret-4711",
    "PLAYBOOK_HUBSPOT_TOKEN": "pat-hubspot-secret-4712",
    "PLAYBOOK_EVENT_SIGNING_SECRET": "signing-secret-4713-0123456789abcdef",
    "PLAYBOOK_INBOX_SECRET": "inbox-secret-4714-0123456789abcdef0123",
    "PLAYBOOK_TEMPORAL_API_KEY": "temporal-secret-4715",
    "PLAYBOOK_UNSUBSCRIBE_SECRET": "unsubscribe-secret-4716-0123456789abcdef",
}
PUBLIC = {"PLAYBOOK_PUBLIC_URL": "https://cs.example.com/engine"}
# what every production deployment needs besides its providers: where links point and the key that signs them
LINKS = {**PUBLIC, "PLAYBOOK_UNSUBSCRIBE_SECRET": SECRETS["PLAYBOOK_UNSUBSCRIBE_SECRET"]}
OPT_INS = {"PLAYBOOK_ALLOW_OUTBOX": "true", "PLAYBOOK_ALLOW_BUILTIN_CRM": "true"}
NOT_AN_INTEGER = "Input should be a valid integer, unable to parse string as an integer"  # pydantic's words


@pytest.fixture(autouse=True)
def no_playbook_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads os.environ: the tests start from none of the PLAYBOOK_* variables of the shell."""
    for name in list(os.environ):
        if name.upper().startswith("PLAYBOOK_"):
            monkeypatch.delenv(name)


def refusal(settings: Settings) -> str:
    with pytest.raises(SettingsError) as caught:
        settings.check()
    return str(caught.value)


# ------------------------------------------------------------------------------------------- the default


def test_the_default_environment_is_production() -> None:
    for settings in (load_settings({}), Settings()):
        assert settings.environment == "production"
        assert not settings.is_dev
        assert settings.logs_as_json


def test_production_refuses_sqlite_outbox_and_the_builtin_crm_without_opt_ins() -> None:
    message = refusal(load_settings({}))
    assert "\n" not in message
    assert "PLAYBOOK_DATABASE_URL" in message  # the default database is SQLite under .playbook/
    assert "PLAYBOOK_ALLOW_OUTBOX=true" in message and "PLAYBOOK_EMAIL_PROVIDER=sendgrid" in message
    assert "PLAYBOOK_ALLOW_BUILTIN_CRM=true" in message and "PLAYBOOK_CRM_PROVIDER=hubspot" in message
    assert "PLAYBOOK_ENVIRONMENT is not set" in message and "playbook dev" in message


def test_production_names_the_environment_it_was_given() -> None:
    message = refusal(load_settings({"PLAYBOOK_ENVIRONMENT": "staging"}))
    assert "PLAYBOOK_ENVIRONMENT=staging" in message


@pytest.mark.parametrize(
    "missing",
    ["PLAYBOOK_DATABASE_URL", "PLAYBOOK_ALLOW_OUTBOX", "PLAYBOOK_ALLOW_BUILTIN_CRM"],
)
def test_each_production_requirement_alone(missing: str) -> None:
    environ = {"PLAYBOOK_DATABASE_URL": POSTGRES, **OPT_INS, **LINKS}
    assert load_settings(environ).check().environment == "production"
    del environ[missing]
    assert missing in refusal(load_settings(environ))


def test_production_with_real_providers_needs_no_opt_in() -> None:
    settings = load_settings(
        {
            "PLAYBOOK_DATABASE_URL": POSTGRES,
            "PLAYBOOK_EMAIL_PROVIDER": "sendgrid",
            "PLAYBOOK_CRM_PROVIDER": "hubspot",
            **SECRETS,
            **PUBLIC,
        }
    )
    assert settings.check() is settings


@pytest.mark.parametrize(
    "name",
    [
        "PLAYBOOK_INBOX_SECRET", "PLAYBOOK_EVENT_SIGNING_SECRET", "PLAYBOOK_TEMPORAL_API_KEY",
        "PLAYBOOK_UNSUBSCRIBE_SECRET", "PLAYBOOK_HUBSPOT_WEBHOOK_SECRET", "PLAYBOOK_METRICS_TOKEN",
    ],
)
def test_production_refuses_placeholder_secrets(name: str) -> None:
    environ = {
        "PLAYBOOK_DATABASE_URL": POSTGRES, "PLAYBOOK_ALLOW_OUTBOX": "1", "PLAYBOOK_ALLOW_BUILTIN_CRM": "yes", **LINKS
    }
    assert f"{name} is a placeholder" in refusal(load_settings({**environ, name: "changeme"}))


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PLAYBOOK_HUBSPOT_DAILY_RESET_TIMEZONE", "Mars/Olympus", "must be an IANA time zone"),
        ("PLAYBOOK_HUBSPOT_DAILY_RESET_TIMEZONE", "../../etc/passwd", "must be an IANA time zone"),
        ("PLAYBOOK_HUBSPOT_SEARCH_PER_SECOND", "0", "must be above 0"),
        ("PLAYBOOK_WORKER_METRICS_ADDRESS", "9464", "must be host:port"),
        ("PLAYBOOK_WORKER_METRICS_ADDRESS", "0.0.0.0:99999", "must be host:port"),
    ],
)
def test_unusable_values_are_refused_in_every_environment(name: str, value: str, says: str) -> None:
    assert says in refusal(load_settings({"PLAYBOOK_ENVIRONMENT": "dev", name: value}))
    fine = {"PLAYBOOK_HUBSPOT_DAILY_RESET_TIMEZONE": "America/New_York", "PLAYBOOK_HUBSPOT_SEARCH_PER_SECOND": "2.5",
            "PLAYBOOK_WORKER_METRICS_ADDRESS": "0.0.0.0:9464"}
    load_settings({"PLAYBOOK_ENVIRONMENT": "dev", name: fine[name]}).check()


def production_with(**changes: str) -> dict[str, str]:
    environ = {"PLAYBOOK_DATABASE_URL": POSTGRES, **OPT_INS, **LINKS}
    environ.update(changes)
    return {name: value for name, value in environ.items() if value}


def test_production_needs_a_public_https_url_for_unsubscribe_links() -> None:
    assert load_settings(production_with()).check().public_url == "https://cs.example.com/engine"
    missing = refusal(load_settings(production_with(PLAYBOOK_PUBLIC_URL="")))
    assert "set PLAYBOOK_PUBLIC_URL to the https:// address recipients reach the API at" in missing
    plain = refusal(load_settings(production_with(PLAYBOOK_PUBLIC_URL="http://cs.example.com")))
    assert "PLAYBOOK_PUBLIC_URL must be an https:// address" in plain
    # dev may use plain http (the local API), but not something that is no URL at all
    assert load_settings({"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_PUBLIC_URL": "http://127.0.0.1:8000"}).check()
    for bad in ("cs.example.com", "https://", "ftp://cs.example.com", "https://cs.example.com/?a=1"):
        message = refusal(load_settings({"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_PUBLIC_URL": bad}))
        assert message == f"PLAYBOOK_PUBLIC_URL must be an http(s):// address with a host, not {bad!r}"


def test_production_needs_an_unsubscribe_secret_shared_by_every_process() -> None:
    message = refusal(load_settings(production_with(PLAYBOOK_UNSUBSCRIBE_SECRET="")))
    assert "set PLAYBOOK_UNSUBSCRIBE_SECRET" in message and "\n" not in message
    assert Settings(environment="dev").check().unsubscribe_secret is None  # dev keeps a key in its home


def test_the_sendgrid_webhook_key_must_be_an_ecdsa_public_key() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def shown(key) -> str:  # type: ignore[no-untyped-def]  # as SendGrid shows it: base64 DER
        return base64.b64encode(key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()

    good = shown(ec.generate_private_key(ec.SECP256R1()))
    dev = {"PLAYBOOK_ENVIRONMENT": "dev"}
    assert load_settings({**dev, "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY": good}).check()
    rsa_key = shown(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for bad in ("not a key", good[:40], rsa_key):
        message = refusal(load_settings({**dev, "PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY": bad}))
        assert message.startswith("PLAYBOOK_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key")


def test_a_misspelt_opt_in_is_an_error_not_false() -> None:
    with pytest.raises(SettingsError, match="PLAYBOOK_ALLOW_OUTBOX"):
        load_settings({"PLAYBOOK_ALLOW_OUTBOX": "sure"})


# ------------------------------------------------------------------------------------------------ dev


def test_dev_when_asked_allows_the_embedded_stack() -> None:
    settings = load_settings({"PLAYBOOK_ENVIRONMENT": "dev"})
    assert settings.check() is settings
    assert settings.is_dev and settings.db_url.startswith("sqlite") and settings.email_provider == "outbox"
    assert not settings.logs_as_json
    assert Settings(environment="dev").check().is_dev


def test_dev_still_checks_the_providers() -> None:
    message = refusal(load_settings({"PLAYBOOK_ENVIRONMENT": "dev", "PLAYBOOK_EMAIL_PROVIDER": "sendgrid"}))
    assert message == "PLAYBOOK_SENDGRID_API_KEY is missing or a placeholder"


def test_playbook_dev_sets_dev_for_itself_and_what_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBOOK_ENVIRONMENT", "production")  # even then: `playbook dev` is the embedded stack
    seen = []

    async def stack(settings: Settings, port: int, ui_port: int) -> None:
        seen.append((settings, port, os.environ.get("PLAYBOOK_ENVIRONMENT")))

    monkeypatch.setattr(cli, "_dev_stack", stack)
    result = CliRunner().invoke(cli.app, ["dev", "--library", str(PLAYBOOKS), "--port", "7999"])
    assert result.exit_code == 0, result.output
    [(settings, port, variable)] = seen
    assert (settings.environment, variable, port) == ("dev", "dev", 7999)
    assert settings.temporal_address == "127.0.0.1:7999" and settings.library == str(PLAYBOOKS)
    assert settings.check() is settings


def test_the_long_running_commands_start_when_dev_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLAYBOOK_ENVIRONMENT", "dev")
    assert cli._settings_to_start("worker").is_dev


# -------------------------------------------------------------------------------------------- secrets


def all_secrets() -> Settings:
    return load_settings(
        {
            "PLAYBOOK_DATABASE_URL": POSTGRES,
            "PLAYBOOK_EMAIL_PROVIDER": "sendgrid",
            "PLAYBOOK_CRM_PROVIDER": "hubspot",
            **SECRETS,
        }
    )


def assert_no_secret(text: str) -> None:
    for value in [*SECRETS.values(), "db-password-31337"]:
        assert value not in text


def test_secrets_are_not_in_repr_str_or_json() -> None:
    settings = all_secrets()
    for text in (repr(settings), str(settings), settings.model_dump_json(), f"{settings}", str(settings.model_dump())):
        assert_no_secret(text)
    assert "**********" in repr(settings)
    assert "db.internal" in repr(settings)  # the database URL is shown without its password


def test_secrets_are_not_in_error_messages(tmp_path: Path) -> None:
    bad = {**SECRETS, "PLAYBOOK_API_PORT": "not-a-port", "PLAYBOOK_ENVIRONMENT": "production"}
    with pytest.raises(SettingsError) as caught:
        load_settings(bad)
    assert str(caught.value) == f"PLAYBOOK_API_PORT: {NOT_AN_INTEGER}"
    file = tmp_path / "settings.toml"
    file.write_text("sendgrid_api_key = 4716999\n")  # not a string: pydantic would quote the input
    with pytest.raises(SettingsError) as caught:
        load_settings({"PLAYBOOK_SETTINGS_FILE": str(file)})
    assert "4716999" not in str(caught.value) and "PLAYBOOK_SENDGRID_API_KEY" in str(caught.value)
    placeholder_run = load_settings({**SECRETS, "PLAYBOOK_DATABASE_URL": "sqlite:///x.db"})
    assert_no_secret(refusal(placeholder_run))


def test_the_providers_get_the_secret_values() -> None:
    settings = all_secrets()
    assert reveal(settings.sendgrid_api_key) == SECRETS["PLAYBOOK_SENDGRID_API_KEY"]
    assert reveal(None) == ""
    crm = rt.crm_provider(settings)
    assert crm._http.headers["Authorization"] == f"Bearer {SECRETS['PLAYBOOK_HUBSPOT_TOKEN']}"  # type: ignore[attr-defined]
    email = rt.email_provider(settings)
    assert email._client.api_key == SECRETS["PLAYBOOK_SENDGRID_API_KEY"]  # type: ignore[attr-defined]
    from api.web_session import _secret

    assert _secret(settings) == SECRETS["PLAYBOOK_INBOX_SECRET"].encode()


# ------------------------------------------------------------------------------------ the class itself


def test_settings_are_frozen_and_hashable() -> None:
    settings = load_settings({"PLAYBOOK_ENVIRONMENT": "dev"})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError (frozen_instance)
        settings.environment = "production"  # type: ignore[misc]
    assert hash(settings) == hash(load_settings({"PLAYBOOK_ENVIRONMENT": "dev"}))
    changed = settings.replace(library="elsewhere")
    assert (changed.library, changed.environment, settings.library) == ("elsewhere", "dev", "playbooks")


def test_the_settings_file_and_the_environment_over_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "settings.toml"
    file.write_text('environment = "dev"\napi_port = 9001\ntask_queue = "from-file"\ninbox_secret = "file-secret"\n')
    settings = load_settings({"PLAYBOOK_SETTINGS_FILE": str(file), "PLAYBOOK_TASK_QUEUE": "from-env"})
    assert (settings.environment, settings.api_port, settings.task_queue) == ("dev", 9001, "from-env")
    assert reveal(settings.inbox_secret) == "file-secret"
    monkeypatch.setenv("PLAYBOOK_SETTINGS_FILE", str(file))
    monkeypatch.setenv("PLAYBOOK_API_PORT", "9002")
    assert (Settings().api_port, load_settings().api_port, Settings(api_port=9003).api_port) == (9002, 9002, 9003)


def test_a_settings_file_that_is_missing_or_misspelt_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="which is not a file"):
        load_settings({"PLAYBOOK_SETTINGS_FILE": str(tmp_path / "nope.toml")})
    file = tmp_path / "settings.toml"
    file.write_text('databse_url = "postgresql://db/x"\n')
    with pytest.raises(SettingsError, match="unknown setting 'databse_url'"):
        load_settings({"PLAYBOOK_SETTINGS_FILE": str(file)})
    file.write_text("environment = \n")
    with pytest.raises(SettingsError, match="is not valid TOML"):
        load_settings({"PLAYBOOK_SETTINGS_FILE": str(file)})


# --------------------------------------------------------------------------- the commands, as processes


def playbook(args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **extra}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", ["worker", "api"])
def test_worker_and_api_refuse_to_start_with_an_empty_environment(command: str, tmp_path: Path) -> None:
    done = playbook([command], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"playbook {command}: refusing to start: ")
    assert "PLAYBOOK_DATABASE_URL" in line and "PLAYBOOK_ALLOW_OUTBOX=true" in line and "PLAYBOOK_ENVIRONMENT" in line


def test_worker_py_refuses_in_one_line_too(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **SECRETS}
    done = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("worker.py: refusing to start: ") and "PLAYBOOK_ENVIRONMENT" in line
    assert_no_secret(done.stderr + done.stdout)


def test_a_refusal_shows_no_secret(tmp_path: Path) -> None:
    done = playbook(["api"], tmp_path, PLAYBOOK_EMAIL_PROVIDER="sendgrid", **SECRETS)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert_no_secret(done.stderr + done.stdout)


def test_unusable_settings_are_one_line_for_any_command(tmp_path: Path) -> None:
    sendgrid_key = SECRETS["PLAYBOOK_SENDGRID_API_KEY"]
    done = playbook(["migrate"], tmp_path, PLAYBOOK_API_PORT="eighty", PLAYBOOK_SENDGRID_API_KEY=sendgrid_key)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"playbook: PLAYBOOK_API_PORT: {NOT_AN_INTEGER}"
