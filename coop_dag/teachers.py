"""Teachers: the policies whose rollouts are distilled.

- `TemplatedTeacher` (embedded default): the seed's tier-4/v5-tf generator turned into a policy.
  Deterministic per (seed, pair); phrasing varies across pairs and seeds. Turn 0 proposes a
  split naming task-derived paths (or, when the partner's plan already arrived, acknowledges it
  and echoes both sides' paths); then it reads its files, applies its gold edit with ordinary
  bash (`git apply` on a heredoc), runs the tests and submits. It speaks the same model protocol
  as any LLM, returning OpenAI-shape `tool_calls`.
- litellm / OpenAI-compatible teachers: `LiteLLMChatModel` (API teachers are re-tokenised
  downstream; endpoints that return token ids give native TITO pairs).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from coop_dag.models import LiteLLMChatModel, ModelResponse
from coop_dag.tasks import Feature, Pair
from coop_dag.variants import Variant

PATCH_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)
INBOX_RE = re.compile(r"^\[Message from (agent\d+)\]: ?(.*)", re.DOTALL)

# Phrasings vary across rollouts; each keeps >= 2 plan keywords and the task's paths.
PROPOSALS = (
    "Plan: I'll implement {title} and edit {mine}. You take your feature's files; "
    "tell me which ones so we don't overlap. I'll start once I have your plan.",
    "Hi {partner}, here is my plan to split the work: I'll take {mine} for {title}. "
    "Which files will you edit? I'll avoid them.",
    "Proposed split: first I'll change {mine} ({title}). You keep to your own files; "
    "send me your list and I'll stay out of them.",
    "Plan for our split: I'll own {mine} to add {title}. Could you reply with the files you "
    "will edit, so each step stays on separate files?",
)
ACKS = (
    "Thanks, plan agreed. You take {theirs}; I'll take {mine} for {title}. No overlap, "
    "so I'll start now.",
    "Sounds good: split confirmed. I'll edit {mine} ({title}) and you edit {theirs}. "
    "I'll stay off your files.",
    "Agreed. First I'll do {mine} for {title}; you keep {theirs}. Next step for me is "
    "reading my files.",
)
THOUGHTS = {
    "read": "Our plan is settled. I'll look at the outline of the files I claimed.",
    "edit": "I'll apply my change to the files from my plan.",
    "test": "Now I'll run the test suite to check my change.",
    "submit": "The change is in and the tests ran. Submitting.",
}


def patch_files(patch_text: str) -> list[str]:
    """Files a unified git diff touches, in order."""
    return list(dict.fromkeys(m.group(2) for m in PATCH_FILE_RE.finditer(patch_text)))


def feature_title(feature: Feature) -> str:
    match = re.search(r"\*\*Title\*\*:\s*(.+)", feature.description)
    title = match.group(1).strip() if match else f"feature {feature.feature_id}"
    return title.replace("`", "")[:80]


def own_files(feature: Feature) -> list[str]:
    """The files this feature edits: its gold patch's files (task-derived, like v5-tf)."""
    text = feature.feature_patch.read_text() if feature.feature_patch.is_file() else ""
    return patch_files(text) or list(feature.files)


def _quote(paths: list[str]) -> str:
    return ", ".join(f"`{p}`" for p in paths)


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

    def _next(self, messages: list[dict]) -> tuple[str, str]:
        mine = own_files(self.feature)
        step = self._turn
        if step == 0:
            plan = self._partner_plan(messages)
            values = {
                "mine": _quote(mine),
                "title": feature_title(self.feature),
                "partner": self.partner_id,
            }
            if plan is not None:  # responder form: ack and echo both sides' paths
                from coop_dag.paths import extract_paths

                theirs = [p for p in extract_paths(plan) if p not in mine] or ["their files"]
                body = self._rng.choice(ACKS).format(theirs=_quote(theirs), **values)
                return (
                    "My colleague's plan has arrived; I'll confirm the split.",
                    f"send_message {self.partner_id} <<'MSG'\n{body}\nMSG",
                )
            body = self._rng.choice(PROPOSALS).format(**values)
            return (
                "Before touching any code I'll propose a split of the files with my colleague.",
                f"send_message --wait {self.partner_id} <<'MSG'\n{body}\nMSG",
            )
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
    ``endpoint``: for a ``served`` teacher, the :class:`coop_dag.serving.Endpoint` serving
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
