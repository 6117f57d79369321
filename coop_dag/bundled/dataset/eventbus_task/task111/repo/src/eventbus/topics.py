"""Topic names and subscription patterns.

A topic is one or more dot-separated segments of letters, digits, `_` and `-`
(`order.item-added`). A pattern is a topic whose segments may also be `*`, which
matches exactly one segment.
"""

from __future__ import annotations

import re

from .errors import InvalidTopic

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")
WILDCARD = "*"


def _segments(text: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise InvalidTopic(str(text), "empty")
    return text.split(".")


def validate_topic(topic: str) -> str:
    for segment in _segments(topic):
        if not _SEGMENT_RE.match(segment):
            raise InvalidTopic(topic, f"bad segment {segment!r}")
    return topic


def validate_pattern(pattern: str) -> str:
    for segment in _segments(pattern):
        if segment != WILDCARD and not _SEGMENT_RE.match(segment):
            raise InvalidTopic(pattern, f"bad segment {segment!r}")
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` is delivered to a subscription on `pattern`."""
    want, have = pattern.split("."), topic.split(".")
    if len(want) != len(have):
        return False
    return all(w == WILDCARD or w == h for w, h in zip(want, have))
