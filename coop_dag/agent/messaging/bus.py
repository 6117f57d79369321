"""Agent-to-agent messaging over Redis, CooperBench's scheme.

Redis layout (CooperBench's `MessagingConnector`, with the run namespace given explicitly
rather than as a `#run:<id>` URL fragment):

    <run_prefix>:<agent>:inbox    list of JSON {"from", "to", "content", "timestamp"}
    <run_prefix>:<agent>:alive    float timestamp, set when the agent starts
    <run_prefix>:<agent>:exited   float timestamp, set when the agent finishes

`run_prefix` is `run:<id>` (see `new_run_prefix`), so keys read `run:ab12cd34:agent1:inbox`
exactly as CooperBench's. Timestamps are always floats (`time.time()`): CooperBench 0.0.8
crashed sorting a conversation with mixed int/str timestamps, so foreign ISO strings are
coerced on receipt too.

conversation.json follows CooperBench: every agent keeps a record of what it sent
(`MessageBus.sent_messages()`), and the runner merges the records with
`conversation_records()`, sorted by timestamp.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from coop_dag.agent.messaging.errors import MessagingError, PartnerExited, UnknownRecipient

DEFAULT_TTL = 7 * 24 * 3600  # keys expire after a week, so a shared cluster Redis never fills up


# --------------------------------------------------------------------------------------------
# the bus


def new_run_prefix(run_id: str | None = None) -> str:
    """CooperBench's namespace for one episode: `run:<8 hex>`."""
    return f"run:{run_id or uuid.uuid4().hex[:8]}"


def _coerce_timestamp(value: Any, default: float) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return default


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# Atomic "deliver unless the recipient has exited": a message is either in the inbox before the
# recipient's exited flag is set, or refused. KEYS: inbox, exited. ARGV: payload, ttl.
_SEND_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""


class MessageBus:
    """One agent's view of a run's mailboxes.

    `client` is a `redis.Redis` (see `coop_dag.agent.redis_server.connect`); bytes or str responses
    both work. `agents`, if given, is the run's roster: sending to anyone else raises
    `UnknownRecipient`. Safe to share between threads.
    """

    def __init__(
        self,
        client: Any,
        run_prefix: str,
        agent_id: str,
        *,
        agents: Iterable[str] | None = None,
        ttl: int | None = DEFAULT_TTL,
    ) -> None:
        if not agent_id:
            raise ValueError("agent_id must be non-empty")
        self.client = client
        self.run_prefix = run_prefix.rstrip(":")
        self.agent_id = agent_id
        self.agents = list(agents) if agents is not None else None
        self.ttl = int(ttl or 0)
        self._sent: list[dict] = []
        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._send_script = client.register_script(_SEND_LUA)

    # keys ------------------------------------------------------------------------------------
    def _key(self, agent: str, kind: str) -> str:
        return f"{self.run_prefix}:{agent}:{kind}"

    def inbox_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "inbox")

    def alive_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "alive")

    def exited_key(self, agent: str | None = None) -> str:
        return self._key(agent or self.agent_id, "exited")

    # sending ---------------------------------------------------------------------------------
    def send(self, to: str, content: str) -> dict:
        """Push `{from, to, content, timestamp}` onto `to`'s inbox and record it.

        Raises `PartnerExited` if `to` has exited, `UnknownRecipient` if a roster was given and
        `to` is not on it, `MessagingError` for a message to oneself.
        """
        if to == self.agent_id:
            raise MessagingError(f"{self.agent_id} cannot send a message to itself")
        if self.agents is not None and to not in self.agents:
            raise UnknownRecipient(to, [a for a in self.agents if a != self.agent_id])
        message = {
            "from": self.agent_id,
            "to": to,
            "content": str(content),
            "timestamp": time.time(),
        }
        result = self._send_script(
            keys=[self.inbox_key(to), self.exited_key(to)],
            args=[json.dumps(message), self.ttl],
        )
        if int(result) < 0:
            raise PartnerExited(to)
        with self._lock:
            self._sent.append(dict(message))
        return dict(message)

    def sent_messages(self) -> list[dict]:
        """Every message this bus delivered, in order (copies), for conversation.json."""
        with self._lock:
            return [dict(m) for m in self._sent]

    # receiving -------------------------------------------------------------------------------
    def receive(self) -> list[dict]:
        """Pop every pending message, oldest first. Timestamps come back as floats."""
        key = self.inbox_key()
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw_messages, _ = pipe.execute()
        now = time.time()
        return [self._decode(raw, now) for raw in raw_messages]

    def pending(self) -> int:
        """How many messages wait in this agent's inbox, without consuming them."""
        return int(self.client.llen(self.inbox_key()))

    def _decode(self, raw: Any, now: float) -> dict:
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            message = None
        if not isinstance(message, dict):  # a foreign writer pushed something odd
            message = {"content": _text(raw)}
        message.setdefault("from", "unknown")
        message.setdefault("to", self.agent_id)
        message["content"] = "" if message.get("content") is None else str(message["content"])
        message["timestamp"] = _coerce_timestamp(message.get("timestamp"), now)
        return message

    def wait_for_reply(self, partner: str, timeout: float, poll: float = 0.2) -> list[dict]:
        """Block until a message arrives (returns everything popped, at least one message),
        `partner` exits (returns whatever it sent before exiting, possibly `[]`), or `timeout`
        seconds pass (`[]`). `partner_exited(partner)` tells the last two apart."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Exited is read *before* draining: a partner's messages are pushed before its
            # exited flag is set, so once the flag is seen, this drain holds all of them.
            exited = self.partner_exited(partner)
            messages = self.receive()
            if messages or exited:
                return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(poll, remaining))

    # presence --------------------------------------------------------------------------------
    def mark_alive(self) -> None:
        self.client.set(self.alive_key(), repr(time.time()), ex=self.ttl or None)

    def mark_exited(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.exited_key(), repr(time.time()), ex=self.ttl or None)
        pipe.delete(self.alive_key())
        pipe.execute()

    def is_alive(self, agent: str) -> bool:
        return bool(self.client.exists(self.alive_key(agent)))

    def partner_exited(self, partner: str) -> bool:
        return bool(self.client.exists(self.exited_key(partner)))

    def new_departures(self, partners: Iterable[str] | None = None) -> list[str]:
        """Partners that have exited and were not reported by an earlier call: feed each to
        `departure_notice` once. `partners` defaults to the roster minus this agent."""
        if partners is None:
            partners = [a for a in (self.agents or []) if a != self.agent_id]
        fresh = []
        for partner in partners:
            if partner not in self._announced and self.partner_exited(partner):
                self._announced.add(partner)
                fresh.append(partner)
        return fresh

    def reset(self) -> None:
        """Delete this agent's inbox, alive and exited keys. Only for reusing a run prefix, and
        only before any partner can send: a reset after a partner's send loses that message."""
        self.client.delete(self.inbox_key(), self.alive_key(), self.exited_key())


# --------------------------------------------------------------------------------------------
# trajectory / conversation formatting


def format_inbox(messages: Iterable[dict]) -> list[dict]:
    """Inbox deliveries as trajectory user messages, CooperBench's wording:
    `[Message from agent1]: <content>`."""
    now = time.time()
    formatted = []
    for m in messages:
        sender = m.get("from", "unknown")
        formatted.append(
            {
                "role": "user",
                "content": f"[Message from {sender}]: {m.get('content', '')}",
                "extra": {
                    "timestamp": now,
                    "inbox": {
                        "from": sender,
                        "to": m.get("to"),
                        "sent_at": _coerce_timestamp(m.get("timestamp"), now),
                    },
                },
            }
        )
    return formatted


def departure_notice(partner: str) -> dict:
    """The one-time user message telling an agent its partner has exited. Deliberately not
    `[Message from ...]`, so it never counts as an inbox delivery."""
    return {
        "role": "user",
        "content": (
            f"[Notice]: {partner} has finished and exited. It will not read or answer further "
            "messages; continue your own task."
        ),
        "extra": {"timestamp": time.time(), "notice": "partner_exited", "partner": partner},
    }


def conversation_records(
    sent_messages: Iterable[dict], feature_ids: Mapping[str, int] | None = None
) -> list[dict]:
    """conversation.json in CooperBench's shape — `{from, to, message, timestamp, feature_id}`
    — from the union of every agent's `sent_messages()`, sorted by (float) timestamp."""
    feature_ids = feature_ids or {}
    records = [
        {
            "from": m.get("from"),
            "to": m.get("to"),
            "message": m.get("content", m.get("message", "")),
            "timestamp": _coerce_timestamp(m.get("timestamp"), 0.0),
            "feature_id": feature_ids.get(m.get("from")),
        }
        for m in sent_messages
    ]
    records.sort(key=lambda r: r["timestamp"])
    return records
