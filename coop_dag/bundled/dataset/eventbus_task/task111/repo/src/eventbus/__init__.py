"""eventbus: in-process publish/subscribe."""

from .bus import EventBus
from .errors import EventBusError, InvalidTopic
from .subscription import Event, Subscription
from .topics import matches, validate_pattern, validate_topic

__all__ = [
    "Event",
    "EventBus",
    "EventBusError",
    "InvalidTopic",
    "Subscription",
    "matches",
    "validate_pattern",
    "validate_topic",
]
