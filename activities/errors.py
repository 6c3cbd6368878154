"""Provider errors, and the one place they become Temporal ApplicationErrors.

    ProviderError
    ├── TransientError      the provider is down, slow or rate-limiting: retry
    ├── RejectedError       the provider refused this input (bad address, unknown field): retrying won't help
    ├── NotFoundError       the account, contact or CSM does not exist: retrying won't help
    └── ConfigurationError  a key is missing or wrong: retrying won't help until someone fixes it
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError


class ProviderError(Exception):
    retryable = True

    def __init__(
        self, message: str, *, provider: str = "", status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        # seconds the provider asked us to wait (a 429's reset time): Temporal's next retry waits that long
        self.retry_after = retry_after


class TransientError(ProviderError):
    retryable = True


class RejectedError(ProviderError):
    retryable = False


class NotFoundError(ProviderError):
    retryable = False


class ConfigurationError(ProviderError):
    retryable = False


def from_http_status(status: int, message: str, provider: str, retry_after: float | None = None) -> ProviderError:
    """Maps an HTTP answer to our kinds: 429 and 5xx are transient, 401/403 configuration, 404 not found."""
    if status == 429 or status >= 500:
        return TransientError(message, provider=provider, status=status, retry_after=retry_after)
    if status in (401, 403):
        return ConfigurationError(message, provider=provider, status=status)
    if status == 404:
        return NotFoundError(message, provider=provider, status=status)
    return RejectedError(message, provider=provider, status=status)


def to_application_error(err: ProviderError) -> ApplicationError:
    return ApplicationError(
        f"{err.provider or 'provider'}: {err.message}",
        type=type(err).__name__,
        non_retryable=not err.retryable,
        # instead of the retry policy's next interval: the provider said when it will take requests again
        next_retry_delay=timedelta(seconds=err.retry_after) if err.retry_after is not None else None,
    )
