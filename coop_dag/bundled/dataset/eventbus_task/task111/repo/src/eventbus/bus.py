"""The EventBus: subscribe handlers to topic patterns and publish events to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .subscription import Event, Handler, Subscription
from .topics import matches, validate_pattern, validate_topic


class EventBus:
    """Synchronous pub/sub: `publish` calls matching handlers in subscription order."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.published = 0

    def subscribe(self, pattern: str, handler: Handler) -> Subscription:
        validate_pattern(pattern)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        subscription = Subscription(pattern, handler, self)
        self._subscriptions.append(subscription)
        return subscription

    def on(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator form of `subscribe`; returns the handler unchanged."""

        def register(handler: Handler) -> Handler:
            self.subscribe(pattern, handler)
            return handler

        return register

    def unsubscribe(self, subscription: Subscription) -> bool:
        if subscription not in self._subscriptions:
            return False
        self._subscriptions.remove(subscription)
        subscription.active = False
        return True

    def subscribers(self, topic: str) -> list[Subscription]:
        """The subscriptions `topic` would be delivered to, in delivery order."""
        validate_topic(topic)
        return [s for s in self._subscriptions if matches(s.pattern, topic)]

    def publish(self, topic: str, payload: Any = None) -> list[Any]:
        """Deliver an event to every matching handler; returns the handlers' results."""
        event = Event(topic, payload)
        results = []
        for subscription in self.subscribers(topic):
            if not subscription.active:  # cancelled by an earlier handler of this event
                continue
            subscription.calls += 1
            results.append(subscription.handler(event))
        self.published += 1
        return results

    def clear(self) -> None:
        for subscription in self._subscriptions:
            subscription.active = False
        self._subscriptions.clear()

    def __len__(self) -> int:
        return len(self._subscriptions)
