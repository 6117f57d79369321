"""Teachers: the policies whose rollouts are distilled.

- `TemplatedTeacher` (embedded default): the seed's tier-4/v5-tf generator turned into a policy.
  Deterministic per (seed, pair); phrasing varies across pairs and seeds. Turn 0 proposes a
  split naming task-derived paths and, per file, the functions/classes its edit touches (or,
  when the partner's plan already arrived, acknowledges it and echoes both sides' paths); then
  it reads its files, applies its gold edit with ordinary bash (`git apply` on a heredoc), runs
  the tests and submits. It speaks the same model protocol as any LLM, returning OpenAI-shape
  `tool_calls`.
  Honesty about overlap: the proposer knows only its own feature, so it names its regions and
  offers to split any file the partner also needs; the responder compares the partner's plan
  with its own files and, when both edit a file, proposes who takes which functions there
  (flagging a function both need). When both agents proposed at once and their plans share a
  file, each proposer sends that split as a follow-up before reading code. It never claims
  "no overlap" when the plans share a file and never sends a placeholder for files the partner
  did not name.
- litellm / OpenAI-compatible teachers: `LiteLLMChatModel` (API teachers are re-tokenised
  downstream; endpoints that return token ids give native TITO pairs).
- `CopierPolicy`: a control, not a teacher. No model and no understanding: it pastes the
  feature's Files Modified list into a plan message, greps those files and submits without an
  edit. Whatever metric it clears measures copying the task text, not planning.

The plans' wording and the reading of the partner's plan are in `plan_text.py`, the regions a
patch changes in `patch_regions.py`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from coop_dag.agent.models import LiteLLMChatModel, ModelResponse
from coop_dag.agent.patch_regions import patch_regions
from coop_dag.agent.plan_text import (
    ACKS,
    ASK_FILES_ACKS,
    FOLLOW_UPS,
    PROPOSALS,
    SHARE_OFFERS,
    SHARED_ACKS,
    THOUGHTS,
    claimed_paths,
    describe_file,
    feature_title,
    own_files,
    quote_paths,
    shared_split,
)
from coop_dag.config.variants import Variant
from coop_dag.dataset.tasks import Feature, Pair
from coop_dag.util.paths import extract_paths

INBOX_RE = re.compile(r"^\[Message from (agent\d+)\]: ?(.*)", re.DOTALL)
# A delivery anywhere in a text: `send_message --wait` returns the reply in its observation.
RECEIVED_RE = re.compile(r"\[Message from (agent\d+)\]: ?")


def _bash_call(call_id: str, command: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "bash", "arguments": json.dumps({"command": command})},
    }


@dataclass
class TemplatedTeacher:
    """A scripted plan-first policy for one agent of one pair."""

    pair: Pair
    feature: Feature
    agent_id: str
    partner_id: str
    seed: int = 0
    responder_delay: float = 0.0  # >0: let the partner's plan arrive first (responder form)
    name: str = "templated"
    _turn: int = 0
    _rng: random.Random = field(init=False)
    _proposed: bool = field(default=False, init=False)  # turn 0 was a proposal, not a reply
    _extra_turns: int = field(default=0, init=False)  # a follow-up message shifts the script

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.seed}:{self.pair.pair_id}:{self.agent_id}".encode())
        self._rng = random.Random(int.from_bytes(digest.digest()[:8], "big"))
        self.name = f"templated/seed{self.seed}"

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse:
        if self._turn == 0 and self.responder_delay:
            time.sleep(self.responder_delay)
        thought, command = self._next(messages)
        self._turn += 1
        call = _bash_call(f"call_{self._turn}", command)
        return ModelResponse(
            content=thought,
            tool_calls=[call],
            token_capture=None,
            usage={},
            cost=0.0,
            raw_model=self.name,
        )

    def _partner_plan(self, messages: list[dict]) -> str | None:
        for msg in messages:
            match = INBOX_RE.match(msg.get("content") or "") if msg["role"] == "user" else None
            if match and match.group(1) == self.partner_id:
                return match.group(2)
        return None

    def _partner_reply(self, messages: list[dict]) -> str | None:
        """The first message from the partner anywhere in the history: an inbox delivery or the
        reply a `send_message --wait` observation carries (a body runs to the next marker)."""
        for msg in messages:
            text = msg.get("content") or ""
            if msg["role"] == "user":  # a delivery starts the message; the task prompt only
                text = text if INBOX_RE.match(text) else ""  # describes the marker
            elif msg["role"] != "tool" or not isinstance(text, str):
                continue
            marks = list(RECEIVED_RE.finditer(text))
            for n, mark in enumerate(marks):
                if mark.group(1) == self.partner_id:
                    end = marks[n + 1].start() if n + 1 < len(marks) else len(text)
                    return text[mark.end() : end].strip()
        return None

    def _regions(self) -> dict[str, list[str]]:
        patch = self.feature.feature_patch
        text = patch.read_text() if patch.is_file() else ""
        base = self.feature.dir.parent / "repo"  # bundled base sources, when present
        return patch_regions(text, base if base.is_dir() else None)

    def _split(self, plan: str, named: list[str], shared: list[str]) -> str:
        return shared_split(plan, named, shared, self._regions())

    def _ack(self, plan: str, mine: list[str], values: dict[str, str]) -> str:
        """Reply to the partner's plan: confirm disjoint files, split shared ones, or ask."""
        named = extract_paths(plan)
        claimed = claimed_paths(plan, named)  # "you edit `x`" is a guess about me, not a claim
        if not claimed:
            return self._rng.choice(ASK_FILES_ACKS).format(**values)
        shared = [p for p in mine if p in claimed]
        theirs = [p for p in claimed if p not in mine]
        if not shared:
            return self._rng.choice(ACKS).format(theirs=quote_paths(theirs), **values)
        split = self._split(plan, named, shared)
        if theirs:
            split += f" You also keep {quote_paths(theirs)}."
        return self._rng.choice(SHARED_ACKS).format(
            shared=quote_paths(shared), split=split, title=values["title"]
        )

    def _follow_up(self, messages: list[dict], mine: list[str]) -> str | None:
        """After my proposal: if the partner's message names one of my files and does not split
        it already (proposals crossed), the split of each shared file; else None."""
        plan = self._partner_reply(messages)
        if plan is None:
            return None
        named = extract_paths(plan)
        claimed = claimed_paths(plan, named)  # not the files a reply hands back to me
        shared = [p for p in mine if p in claimed and f"In `{p}`" not in plan]
        if not shared:
            return None
        split = self._split(plan, named, shared)
        return self._rng.choice(FOLLOW_UPS).format(
            shared=quote_paths(shared), split=split, title=feature_title(self.feature)
        )

    def _next(self, messages: list[dict]) -> tuple[str, str]:
        mine = own_files(self.feature)
        step = self._turn
        if step == 0:
            plan = self._partner_plan(messages)
            regions = self._regions()
            values = {
                "mine": ", ".join(describe_file(p, regions.get(p, [])) for p in mine),
                "title": feature_title(self.feature),
                "partner": self.partner_id,
            }
            if plan is not None:  # responder form: ack, echo both sides' paths, split shared
                body = self._ack(plan, mine, values)
                return (
                    "My colleague's plan has arrived; I'll confirm the split.",
                    f"send_message {self.partner_id} <<'MSG'\n{body}\nMSG",
                )
            body = self._rng.choice(PROPOSALS).format(**values)
            body += " " + self._rng.choice(SHARE_OFFERS)
            self._proposed = True
            return (
                "Before touching any code I'll propose a split of the files with my colleague.",
                f"send_message --wait {self.partner_id} <<'MSG'\n{body}\nMSG",
            )
        if step == 1 and self._proposed:
            body = self._follow_up(messages, mine)
            if body is not None:
                self._extra_turns = 1
                return (
                    "My colleague's plan names a file of mine too; I'll settle how we split it.",
                    f"send_message {self.partner_id} <<'MSG'\n{body}\nMSG",
                )
        step -= self._extra_turns
        if step == 1:
            # An outline, not the whole file: keeps prompts short enough for a small student.
            return THOUGHTS["read"], "grep -n 'def \\|class ' " + " ".join(mine)
        if step == 2:
            patch = self.feature.feature_patch.read_text()
            patch += "" if patch.endswith("\n") else "\n"  # trailing blank context lines matter
            return THOUGHTS[
                "edit"
            ], f"git apply <<'COOP_PATCH' && git status --short\n{patch}COOP_PATCH"
        if step == 3:
            return THOUGHTS["test"], "PYTHONPATH=src python -m pytest -q tests 2>&1 | tail -5"
        return THOUGHTS["submit"], "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


COPIER_PLAN = "Plan: I'll edit {files}. You take the rest of the work, split as you like."


@dataclass
class CopierPolicy:
    """The copier control for one agent: turn 1 sends the partner the feature's Files Modified
    list (``--wait``, so it receives the partner's message before any other bash), turn 2 greps
    those files, turn 3 submits. It never edits: edit_follow_through and both_passed stay 0.
    A metric it clears is "copyable" (coop_dag.eval.report)."""

    feature: Feature
    partner_id: str
    name: str = "copier"
    _turn: int = 0

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse:
        files = list(self.feature.files_modified or self.feature.files)
        if self._turn == 0:
            body = COPIER_PLAN.format(files=", ".join(files) or "my feature's files")
            thought = "Sending my colleague the files the task lists."
            command = f"send_message --wait {self.partner_id} <<'MSG'\n{body}\nMSG"
        elif self._turn == 1 and files:
            # `grep -c ''` succeeds on any non-empty file and fails on a missing one: a read of
            # exactly the listed files, nothing learnt from them.
            thought = "Reading the listed files."
            command = "grep -c '' " + " ".join(shlex.quote(f) for f in files)
        else:
            thought, command = "Submitting.", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
        self._turn += 1
        return ModelResponse(
            content=thought,
            tool_calls=[_bash_call(f"call_{self._turn}", command)],
            token_capture=None,
            usage={},
            cost=0.0,
            raw_model=self.name,
        )


def copier_factory():
    """The copier as an episode ModelFactory (one fresh policy per agent)."""
    return lambda pair, feature, agent_id, partner_id: CopierPolicy(feature, partner_id)


class TeacherError(ValueError):
    """A teacher that cannot run; raised before any rollout starts."""


def teacher_facts(variant: Variant) -> dict[str, Any]:
    """Lineage facts about a variant's teacher: never a key's value, only its variable name."""
    t = variant.teacher
    return {
        "variant": variant.name,
        "teacher_kind": t["kind"],
        "teacher_model": t.get("model", "templated"),
        "teacher_endpoint": t.get("api_base"),
        "teacher_api_key_env": t.get("api_key_env"),
        "capture_token_ids": bool(t.get("capture_token_ids", False)),
        "steering": variant.steering,
        "seed": variant.seed,
    }


def make_teacher_factory(variant: Variant, endpoint: Any = None):
    """The variant's teacher as an episode ModelFactory. Checks credentials up front.
    ``endpoint``: for a ``served`` teacher, the :class:`coop_dag.serving.endpoints.Endpoint` serving
    its model (the caller starts it)."""
    teacher = variant.teacher
    kind = teacher["kind"]
    if kind == "served":
        if endpoint is None:
            raise TeacherError(
                f"variant '{variant.name}': a served teacher needs the endpoint serving "
                f"{teacher['model']!r}"
            )
        model = endpoint.chat_model(
            endpoint.base_model_id,
            capture_token_ids=bool(teacher.get("capture_token_ids", True)),
            temperature=float(teacher.get("temperature", 0.0)),
            max_tokens=int(teacher.get("max_tokens", 512)),
        )
        return lambda pair, feature, agent_id, partner_id: model
    if kind == "templated":

        def factory(pair: Pair, feature: Feature, agent_id: str, partner_id: str):
            # Deterministically, about half the pairs exercise the responder form.
            coin = int(hashlib.sha256(f"{variant.seed}:{pair.pair_id}".encode()).hexdigest(), 16)
            delay = 0.5 if (agent_id == "agent2" and coin % 2) else 0.0
            return TemplatedTeacher(pair, feature, agent_id, partner_id, variant.seed, delay)

        return factory
    if kind in ("litellm", "openai_compatible"):
        model = LiteLLMChatModel(
            teacher["model"],
            api_base=teacher.get("api_base"),
            api_key_env=teacher.get("api_key_env"),
            capture_token_ids=bool(teacher.get("capture_token_ids", False)),
            temperature=float(teacher.get("temperature", 0.0)),
        )
        try:
            model.check_credentials()
        except Exception as err:
            raise TeacherError(f"variant '{variant.name}': {err}") from None
        return lambda pair, feature, agent_id, partner_id: model
    raise TeacherError(f"variant '{variant.name}': unknown teacher kind '{kind}'")
