"""What serving raises: the base error of every module here, a content name already served from
elsewhere, and a swap whose verification failed (with the evidence)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coop_dag.serving.swap import ServedAdapter

__all__ = ["AdapterNameConflict", "ServingError", "SwapVerificationError"]


class ServingError(RuntimeError):
    """The adapter could not be served (unreachable endpoint, refused load, bad name)."""


class AdapterNameConflict(ServingError):
    """A content name (``student-<sha12>``) is already loaded from a different path."""


class SwapVerificationError(ServingError):
    """The served adapter does not behave like a freshly swapped-in adapter. ``served``
    holds everything that was observed."""

    def __init__(self, message: str, served: ServedAdapter):
        super().__init__(message)
        self.served = served
