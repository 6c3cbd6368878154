"""Provider errors, and the one place they become Temporal ApplicationErrors.

    ProviderError
    ├── TransientError      the provider is down, slow or rate-limiting: retry
    ├── RejectedError       the provider refused this input (bad address, unknown field): retrying won't help
    ├── NotFoundError       the account, contact or CSM does not exist: retrying won't help
    └── ConfigurationError  a key is missing or wrong: retrying won't help until someone fixes it
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


class ProviderError(Exception):
    retryable = True

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status


class TransientError(ProviderError):
    retryable = True


class RejectedError(ProviderError):
    retryable = False


class NotFoundError(ProviderError):
    retryable = False


class ConfigurationError(ProviderError):
    retryable = False


def from_http_status(status: int, message: str, provider: str) -> ProviderError:
    """Maps an HTTP answer to our kinds: 429 and 5xx are transient, 401/403 configuration, 404 not found."""
    if status == 429 or status >= 500:
        return TransientError(message, provider=provider, status=status)
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
    )
