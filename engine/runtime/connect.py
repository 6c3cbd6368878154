"""Connecting to Temporal and building the activities, both from Settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client, Interceptor, TLSConfig
from temporalio.converter import DataConverter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from activities.crm import BuiltinCrm, CrmProvider
from activities.email import EmailProvider, OutboxProvider
from activities.library import LibraryActivities
from activities.playbook_activities import Listener, PlaybookActivities
from activities.segments import SegmentActivities

from .codec import codec, with_codec
from .messaging import unsubscribe_links
from .schedules import ScheduleActivities
from .settings import Settings, SettingsError, reveal
from .workers import DATA_CONVERTER

SEARCH_ATTRIBUTES = {"PlaybookId": "Keyword", "PlaybookVersion": "Keyword", "AccountId": "Keyword"}


def quiet_runtime() -> Runtime:
    """A Temporal runtime whose core logs only errors (its warnings about the test server's version are noise)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def data_converter(settings: Settings) -> DataConverter:
    """The engine's converter (its payload converter), with the AES-256-GCM codec when PLAYBOOK_PAYLOAD_KEYS is
    set: every client made from the settings (worker, API, CLI, dev stack) reads and writes the same payloads."""
    try:
        payload_codec = codec(reveal(settings.payload_keys))
    except ValueError as err:  # one line naming the setting (never a key), as every other settings problem
        raise SettingsError(str(err)) from None
    return with_codec(DATA_CONVERTER, payload_codec)


def tracing_interceptors(settings: Settings) -> list[Interceptor]:
    """temporalio's OpenTelemetry interceptor when PLAYBOOK_TRACING is on (a worker built from the client inherits
    it); the opentelemetry packages are the optional "tracing" extra, imported only then."""
    if not settings.tracing:
        return []
    try:
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as err:  # the SDK's contrib module imports opentelemetry: one line, as a settings problem
        raise SettingsError(
            "PLAYBOOK_TRACING=true needs OpenTelemetry: install the tracing extra "
            f"(pip install 'playbook-engine[tracing]'); {err}"
        ) from None
    return [TracingInterceptor()]


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    tls: bool | TLSConfig = False
    if settings.temporal_tls or settings.temporal_tls_cert or settings.temporal_api_key:
        tls = TLSConfig(
            client_cert=_read(settings.temporal_tls_cert),
            client_private_key=_read(settings.temporal_tls_key),
            server_root_ca_cert=_read(settings.temporal_tls_ca),
        )
    kwargs: dict[str, Any] = {
        "namespace": settings.temporal_namespace, "tls": tls, "data_converter": data_converter(settings),
        "interceptors": tracing_interceptors(settings),
    }
    if settings.temporal_api_key:
        kwargs["api_key"] = reveal(settings.temporal_api_key)
    if runtime is not None:
        kwargs["runtime"] = runtime
    return await Client.connect(settings.temporal_address, **kwargs)


def email_provider(settings: Settings) -> EmailProvider:
    if settings.email_provider == "sendgrid":
        from activities.sendgrid_email import SendGridProvider

        return SendGridProvider(
            reveal(settings.sendgrid_api_key), host=settings.sendgrid_host, default_sender=settings.default_sender,
            sandbox=settings.sendgrid_sandbox,
        )
    return OutboxProvider()


def crm_provider(settings: Settings) -> CrmProvider:
    if settings.crm_provider == "hubspot":
        from activities.hubspot_crm import HubSpotCrm

        # HubSpot owners have no languages, roles or capacity: those come from the engine's csms table.
        return HubSpotCrm(
            reveal(settings.hubspot_token), base_url=settings.hubspot_base_url, db_url=settings.db_url,
            account_id_property=settings.hubspot_account_id_property,
            search_per_second=settings.hubspot_search_per_second,
            daily_reset_timezone=settings.hubspot_daily_reset_timezone,
            health_score_property=settings.hubspot_health_score_property,
            health_band_property=settings.hubspot_health_band_property,
        )
    return BuiltinCrm(settings.db_url)


def activities(
    settings: Settings, client: Client | None = None, listeners: list[Listener] | None = None
) -> list[Callable[..., Any]]:
    crm = crm_provider(settings)
    acts = PlaybookActivities(
        settings.db_url, crm, email_provider(settings), settings.default_sender, listeners,
        unsubscribe_links=unsubscribe_links(settings),
    )
    segments = SegmentActivities(settings.db_url, crm)
    ticks = ScheduleActivities(crm, client, settings.library)
    return [
        *acts.all(),
        LibraryActivities(settings.library).load_playbook,
        segments.segment_page,
        ticks.start_scheduled_runs,
    ]
