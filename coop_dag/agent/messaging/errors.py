"""The messaging errors. The agent runtime turns any `MessagingError` into a non-zero tool
return code whose output is `str(error)`."""

from __future__ import annotations

from collections.abc import Iterable


class MessagingError(RuntimeError):
    """Base class. The agent runtime turns any of these into a non-zero tool return code
    whose output is `str(error)`."""


class PartnerExited(MessagingError):
    """The recipient has exited; the message was not delivered."""

    def __init__(self, partner: str) -> None:
        super().__init__(
            f"{partner} has exited and can no longer receive messages; "
            "the message was not delivered. Continue on your own."
        )
        self.partner = partner


class UnknownRecipient(MessagingError):
    def __init__(self, recipient: str, agents: Iterable[str]) -> None:
        names = ", ".join(agents)
        super().__init__(f"unknown recipient {recipient!r}; agents in this run: {names}")
        self.recipient = recipient


class SendMessageParseError(MessagingError, ValueError):
    """A `send_message` call in command position that cannot be delivered as written
    (unterminated heredoc or quote, missing recipient or body, inside a pipeline or a
    compound command). The runtime reports it and runs *nothing* from that command."""
