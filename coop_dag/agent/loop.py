"""The coop agent loop, in the spirit of mini-swe-agent: one small class, the whole protocol
visible. Query the model, record the turn, execute its bash action (with `send_message` handled
on the host), feed back the observation, until submission or a limit.

Every assistant turn is recorded (content, tool_calls, token ids, float timestamp) *before* its
action is parsed, so an unparseable turn keeps its data. No context compaction: the prompt of
turn k is exactly `messages[:k]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coop_dag.agent.actions import BASH_TOOL, diagnose_format_error, parse_actions
from coop_dag.agent.messaging.bus import MessageBus, departure_notice, format_inbox
from coop_dag.agent.messaging.errors import MessagingError
from coop_dag.agent.messaging.parser import parse_send_message
from coop_dag.agent.models import ChatModel, ModelResponse
from coop_dag.agent.prompts import Prompts, format_error
from coop_dag.agent.sandbox.base import Sandbox, format_observation

SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


@dataclass
class AgentLimits:
    max_steps: int = 30
    max_context_tokens: int | None = 32768
    command_timeout: float = 60.0
    wait_timeout: float = 60.0
    max_format_errors: int = 3


def _actions(response: ModelResponse) -> list[tuple[str, str | None]]:
    """(command, tool_call_id) per action: each valid bash tool call keeps its own id (an
    invalid call beside it must not shift the ids); inline XML actions have no id."""
    paired = []
    for tc in response.tool_calls or []:
        commands = parse_actions(None, [tc])
        if commands:
            call_id = tc.get("id") if isinstance(tc, dict) else getattr(tc, "id", None)
            paired.append((commands[0], call_id))
    if paired:
        return paired
    return [(command, None) for command in parse_actions(response.content, None)]


def approx_tokens(messages: list[dict]) -> int:
    """Cheap context estimate (~4 chars a token) used when no token ids were captured."""
    return len(json.dumps(messages, ensure_ascii=False)) // 4


@dataclass
class CoopAgent:
    agent_id: str
    partner_id: str
    model: ChatModel
    sandbox: Sandbox
    bus: MessageBus
    prompts: Prompts
    limits: AgentLimits = field(default_factory=AgentLimits)
    count_tokens: Callable[[list[dict]], int] = approx_tokens
    messages: list[dict] = field(default_factory=list)
    status: str = "Running"
    cost: float = 0.0
    steps: int = 0
    error: str | None = None
    _partner_gone_announced: bool = False
    _format_errors: int = 0

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> str:
        self.messages = [
            {"role": "system", "content": self.prompts.system},
            {"role": "user", "content": self.prompts.instance},
        ]
        self.bus.mark_alive()
        try:
            while self.status == "Running":
                self.step()
        except Exception as err:  # recorded, not raised: the episode keeps the partner's work
            self.status, self.error = "Error", f"{type(err).__name__}: {err}"
        finally:
            self.bus.mark_exited()
        return self.status

    def step(self) -> None:
        if self.steps >= self.limits.max_steps:
            self.status = "LimitsExceeded"
            return
        self._deliver_inbox()
        if self.limits.max_context_tokens and (
            self.count_tokens(self.messages) > self.limits.max_context_tokens
        ):
            self.status = "ContextWindowExceeded"
            return
        response = self.model.query(self.messages, [BASH_TOOL])
        self.steps += 1
        self.cost += response.cost or 0.0
        turn = self._record_assistant(response)
        actions = _actions(response)
        turn["extra"]["actions"] = [command for command, _ in actions]
        if not actions:
            self._format_error(diagnose_format_error(response.content, response.tool_calls))
            return
        self._format_errors = 0
        for command, call_id in actions:
            output, returncode = self.execute(command)
            self._record_observation(output, returncode, call_id)
            if self.status != "Running":
                break

    # -- actions ----------------------------------------------------------------------------
    def execute(self, command: str) -> tuple[str, int]:
        """Run one bash action: host-side `send_message`s first, then the remainder in the
        sandbox. Returns the observation text and a return code."""
        try:
            parsed = parse_send_message(command)
        except MessagingError as err:  # malformed send: nothing from this command runs
            return f"Error: {err}", 2
        outputs: list[str] = []
        returncode = 0
        for msg in parsed.messages:
            try:
                self.bus.send(msg.to, msg.content)
                outputs.append(f"Message sent to {msg.to}.")
            except MessagingError as err:  # partner exited, unknown recipient
                returncode = 1
                outputs.append(f"Error: {err}")
                continue
            if msg.wait:
                outputs.append(self._wait_for(msg.to))
        if parsed.remainder.strip():
            result = self.sandbox.run(parsed.remainder, timeout=self.limits.command_timeout)
            if result.output.strip().splitlines()[:1] == [SUBMIT_MARKER]:
                self.status = "Submitted"
                return SUBMIT_MARKER, 0
            outputs.append(format_observation(result.output, result.returncode))
            returncode = returncode or result.returncode
        return "\n".join(o for o in outputs if o), returncode

    def _wait_for(self, partner: str) -> str:
        replies = self.bus.wait_for_reply(partner, self.limits.wait_timeout)
        if replies:
            return "\n".join(m["content"] for m in format_inbox(replies))
        if self.bus.partner_exited(partner):
            self._partner_gone_announced = True
            return f"{partner} has exited without replying."
        return f"No reply from {partner} within {self.limits.wait_timeout:g}s."

    # -- recording ---------------------------------------------------------------------------
    def _deliver_inbox(self) -> None:
        for msg in format_inbox(self.bus.receive()):
            msg.setdefault("extra", {})["timestamp"] = time.time()
            self.messages.append(msg)
        if not self._partner_gone_announced and self.bus.partner_exited(self.partner_id):
            self._partner_gone_announced = True
            notice = departure_notice(self.partner_id)
            notice.setdefault("extra", {})["timestamp"] = time.time()
            self.messages.append(notice)

    def _record_assistant(self, response: ModelResponse) -> dict[str, Any]:
        extra: dict[str, Any] = {"timestamp": time.time()}
        if response.token_capture:
            extra["token_capture"] = response.token_capture
        turn = {"role": "assistant", "content": response.content or "", "extra": extra}
        if response.tool_calls:
            turn["tool_calls"] = response.tool_calls
        self.messages.append(turn)
        return turn

    def _record_observation(self, output: str, returncode: int, call_id: str | None) -> None:
        extra = {"returncode": int(returncode), "timestamp": time.time()}
        if call_id:
            self.messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": output, "extra": extra}
            )
        else:  # action came from inline XML in content: no call id to answer
            self.messages.append({"role": "user", "content": output, "extra": extra})

    def _format_error(self, reason: str) -> None:
        self._format_errors += 1
        self.messages.append(
            {
                "role": "user",
                "content": format_error(reason),
                "extra": {"timestamp": time.time(), "format_error": True},
            }
        )
        if self._format_errors >= self.limits.max_format_errors:
            self.status = "FormatError"

    def trajectory(self, **context: Any) -> dict[str, Any]:
        """The CooperBench trajectory record (`context`: repo, task_id, feature_id, model)."""
        return {
            **context,
            "agent_id": self.agent_id,
            "status": self.status,
            "error": self.error,
            "cost": float(self.cost),
            "steps": self.steps,
            "prompt": self.prompts.kind,
            "messages": self.messages,
        }
