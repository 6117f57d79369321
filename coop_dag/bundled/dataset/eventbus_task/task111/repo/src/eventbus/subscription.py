"""Events and subscription handles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bus import EventBus


@dataclass(frozen=True)
class Event:
    """What a handler receives: the concrete topic and the published payload."""

    topic: str
    payload: Any = None


Handler = Callable[[Event], Any]


@dataclass(eq=False)
class Subscription:
    """A registered handler. Compared by identity; `cancel()` removes it from its bus."""

    pattern: str
    handler: Handler
    bus: EventBus = field(repr=False)
    active: bool = True
    calls: int = 0

    def cancel(self) -> bool:
        """Unsubscribe; False if it was no longer subscribed."""
        return self.bus.unsubscribe(self)
