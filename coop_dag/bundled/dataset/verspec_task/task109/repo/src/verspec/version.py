"""Semantic versions: parsing, precedence and bumping (semver.org 2.0.0)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidVersion

_VERSION_RE = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def _identifier_key(part: str) -> tuple[int, int | str]:
    """Numeric identifiers sort before alphanumeric ones and compare as numbers."""
    if part.isdigit():
        return (0, int(part))
    return (1, part)


@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version. Build metadata is kept but ignored for precedence."""

    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.match(text.strip())
        if match is None:
            raise InvalidVersion(text)
        pre = tuple(match.group("pre").split(".")) if match.group("pre") else ()
        for part in pre:
            if part.isdigit() and len(part) > 1 and part.startswith("0"):
                raise InvalidVersion(text, "numeric identifier with a leading zero")
        build = tuple(match.group("build").split(".")) if match.group("build") else ()
        major, minor, patch = (int(match.group(k)) for k in ("major", "minor", "patch"))
        return cls(major, minor, patch, pre, build)

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.pre)

    def _key(self) -> tuple:
        # A release sorts after every pre-release of itself.
        pre_key = tuple(_identifier_key(p) for p in self.pre)
        return (self.release, 0 if self.pre else 1, pre_key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __le__(self, other: Version) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: Version) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: Version) -> bool:
        return self._key() >= other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def bump_major(self) -> Version:
        return Version(self.major + 1, 0, 0)

    def bump_minor(self) -> Version:
        return Version(self.major, self.minor + 1, 0)

    def bump_patch(self) -> Version:
        """`1.2.3` -> `1.2.4`; a pre-release bumps to its own release (`1.2.4-rc.1` -> `1.2.4`)."""
        if self.pre:
            return Version(self.major, self.minor, self.patch)
        return Version(self.major, self.minor, self.patch + 1)
