"""Exceptions raised by eventbus."""

from __future__ import annotations


class EventBusError(Exception):
    """Base class for eventbus errors."""


class InvalidTopic(EventBusError, ValueError):
    """A topic or subscription pattern is malformed."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"invalid topic {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason
