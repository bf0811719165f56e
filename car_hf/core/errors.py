"""Every error type car_hf raises for users to catch, in one place.

All derive from a standard exception (``ValueError``, ``OSError``, ``RuntimeError``), so code written
against those keeps working.

Example:
    >>> from car_hf.core.errors import InputError
    >>> try:
    ...     raise InputError("row 3, column 'output': the response is None")
    ... except ValueError as error:
    ...     print(error)
    row 3, column 'output': the response is None
"""

from __future__ import annotations


class InputError(ValueError):
    """A row of the input cannot be used; the message names the row and the column."""


class ConfigError(ValueError):
    """An option, or a combination of options, is invalid; raised before any model loads."""


class ModelLoadError(OSError):
    """A model cannot be loaded (no such Hub id or folder, or no network); the message says what to do."""


class CacheError(ValueError):
    """A cache part cannot be used and the caller cannot compute it; the message names its folder and what to do."""


class PublishError(RuntimeError):
    """An upload to the Hub failed; the message names the step and where the local files are."""


class HubAuthError(PublishError):
    """The Hub rejected the token (HTTP 401) or refused the write (HTTP 403)."""


class GenerationError(RuntimeError):
    """Responses could not be generated (an endpoint kept failing); the message names the rows and the cause.

    ``partial`` maps the positions (in the failed call) of the responses generated before the failure to them;
    ``failed`` names the rows that failed (as the call named them).
    """

    def __init__(self, message: str, partial: dict[int, object] | None = None, failed: list[object] | None = None):
        super().__init__(message)
        self.partial = partial or {}
        self.failed = list(failed or [])


EXIT_USER_ERROR = 2
"""Exit status of ``car-hf`` and the recipes for an error the user can fix (an option, a row): one line, no
traceback."""

EXIT_GENERATION_FAILED = 3
"""Exit status when generation failed for some rows after the retries (an endpoint kept failing or refused them):
the finished rows are kept in the checkpoint, and the same command run again generates only the others."""

__all__ = ["EXIT_GENERATION_FAILED", "EXIT_USER_ERROR", "CacheError", "ConfigError", "GenerationError", "HubAuthError",
           "InputError", "ModelLoadError", "PublishError"]
