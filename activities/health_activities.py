"""The nightly health recompute's CRM write (engine/interpreter/health_nightly.py): a page's new scores and bands
into the CRM of record, batched (built-in: the accounts' fields health_score and health_band, one transaction;
HubSpot: two company properties, batch updates of 100). Writing the same again changes nothing, so a retried write
is safe. The page's recompute itself is engine.runtime.health.HealthActivities (it takes health.score_changed
through the intake, which is the runtime's)."""

from __future__ import annotations

from datetime import datetime

from temporalio import activity

from .crm import CrmProvider
from .errors import ProviderError, to_application_error
from .types import Done, HealthWriteRequest


class HealthWriteActivities:
    def __init__(self, crm: CrmProvider) -> None:
        self.crm = crm

    @activity.defn(name="write_health_scores")
    def write_health_scores(self, req: HealthWriteRequest) -> Done:
        try:
            self.crm.write_health(req.writes, datetime.fromisoformat(req.at))
        except ProviderError as err:  # retried (or not) by its kind, after the CRM's own wait when it said one
            raise to_application_error(err) from err
        return Done()
