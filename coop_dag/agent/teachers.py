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
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_dag.agent.models import LiteLLMChatModel, ModelResponse
from coop_dag.config.variants import Variant
from coop_dag.dataset.tasks import Feature, Pair
from coop_dag.util.paths import extract_paths

PATCH_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)
INBOX_RE = re.compile(r"^\[Message from (agent\d+)\]: ?(.*)", re.DOTALL)
# A delivery anywhere in a text: `send_message --wait` returns the reply in its observation.
RECEIVED_RE = re.compile(r"\[Message from (agent\d+)\]: ?")

# Phrasings vary across rollouts; each keeps >= 2 plan keywords and the task's paths. `{mine}`
# lists each file with the functions/classes the edit touches there.
PROPOSALS = (
    "Plan: I'll implement {title} and edit {mine}. You take your feature's files; "
    "tell me which ones so we don't overlap. I'll start once I have your plan.",
    "Hi {partner}, here is my plan to split the work: I'll take {mine} for {title}. "
    "Which files will you edit? I'll stay out of your part.",
    "Proposed split: first I'll change {mine} ({title}). You keep to your own files; "
    "send me your list and I'll stay out of your part.",
    "Plan for our split: I'll own {mine} to add {title}. Could you reply with the files you "
    "will edit, so each step stays clear of the other's code?",
)
# The proposer cannot know the partner's files yet: it offers to split a file rather than assume
# the files are disjoint.
SHARE_OFFERS = (
    "If you need one of these files too, name your functions there and we'll split it by function.",
    "Need one of my files too? Tell me which functions, and we'll split that file.",
)
# Used only when the partner named files and none of them is one of mine.
ACKS = (
    "Thanks, plan agreed. You take {theirs}; I'll take {mine} for {title}. No overlap, "
    "so I'll start now.",
    "Sounds good: split confirmed. I'll edit {mine} ({title}) and you edit {theirs}. "
    "I'll stay off your files.",
    "Agreed. First I'll do {mine} for {title}; you keep {theirs}. Next step for me is "
    "reading my files.",
)
# Both plans name a file: split it. `{split}` says who takes which regions of each shared file.
SHARED_ACKS = (
    "Thanks for the plan. We overlap: we both edit {shared}. Split by function. {split} "
    "I'll start on {title} now and stay inside my part.",
    "Agreed, with one thing to settle: {shared} is in both our plans. Proposed split. {split} "
    "First step for me is my part of {title}.",
    "Plan received. You and I both need {shared}, so here is a split by function. {split} "
    "I'll keep my edits for {title} to my part.",
)
# Proposals crossed (both agents proposed) and both name a file: settle the split right away.
FOLLOW_UPS = (
    "Our plans overlap: we both edit {shared}. Split by function. {split} "
    "I'll stay inside my part for {title}.",
    "We both listed {shared}, so let's split it. {split} I'll keep my edits for {title} to "
    "my part.",
)
# The partner's message named no file: ask, never fill in a placeholder.
ASK_FILES_ACKS = (
    "Thanks. I'll take {mine} for {title}. Your plan didn't say which files you will edit: "
    "which ones are they? If one of mine is among them, I'll split it with you by function.",
    "Got your message. My plan: {mine} for {title}. Could you list the files you will "
    "change, so we can split any file we both need?",
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


MODULE_LEVEL = "module level"  # changes outside any function or class (imports, constants)
MAX_REGIONS = 3  # per file in a message: plans must stay short enough for a small student
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@ ?(.*)$")
_DEF_RE = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")
_IDENT_RE = re.compile(r"`([A-Za-z_][\w.]*(?:\(\))?)`")


# CPython 3.11's parser is not safe in two threads at once (agents of one pair run in
# threads): "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
_AST_LOCK = threading.Lock()


def _scopes(source: str) -> list[tuple[int, int, int, str, bool]]:
    """`(first line, last line, column, qualified name, is_function)` of every class and of every
    function not nested in another function (a nested helper is part of its function)."""
    try:
        with _AST_LOCK:
            tree = ast.parse(source)
    except SyntaxError:
        return []
    out: list[tuple[int, int, int, str, bool]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                is_fn = not isinstance(child, ast.ClassDef)
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((first, child.end_lineno or child.lineno, child.col_offset, name, is_fn))
                if not is_fn:
                    visit(child, f"{name}.")

    visit(tree, "")
    return out


def _label(name: str, is_function: bool) -> str:
    return f"{name}()" if is_function else name


def _enclosing(scopes: list, line: int, indent: int) -> str | None:
    """The innermost def/class around base line `line` whose body `indent` could be in."""
    best = None
    for first, last, col, name, is_fn in scopes:
        if first <= line <= last and col < indent:
            if best is None or col > best[0]:
                best = (col, _label(name, is_fn))
    return best[1] if best else None


class _HunkContext:
    """Without base sources: the scope a hunk line is in, from the definitions the hunk shows
    (its header's context line, which git takes from the last unindented line, and the
    definitions among its lines)."""

    def __init__(self, header: str) -> None:
        self.top: tuple[str, bool] | None = None  # last unindented def/class
        self.inner: tuple[int, str] | None = None  # last indented def in a class: (indent, name)
        self.see(header)

    def see(self, text: str) -> None:
        definition = _DEF_RE.match(text)
        if not definition:
            return
        indent, name = len(definition.group(1)), definition.group(3)
        if indent == 0:
            self.top, self.inner = (name, definition.group(2) == "def"), None
        elif self.top and not self.top[1] and definition.group(2) == "def":
            self.inner = (indent, name)

    def outer(self, indent: int) -> str | None:
        if indent == 0 or self.top is None:
            return None
        name, is_fn = self.top
        if not is_fn and self.inner and indent > self.inner[0]:
            return f"{name}.{self.inner[1]}()"
        return _label(name, is_fn)


def patch_regions(patch_text: str, base_dir: Path | None = None) -> dict[str, list[str]]:
    """Per file a unified git diff changes, the functions/classes the change touches, in order:
    `Class.method()` for functions, `Class` for class bodies, `module level` for the rest
    (imports, constants), and new definitions by their own names. Nested functions count as
    their enclosing function.

    With the base sources (`base_dir`), a changed line is placed in its innermost enclosing
    definition; without them, only what the hunk shows is used.
    """
    regions: dict[str, list[str]] = {}
    for block in re.split(r"^diff --git ", patch_text, flags=re.M)[1:]:
        match = re.match(r"a/(\S+) b/(\S+)", block)
        if not match:
            continue
        path = match.group(2)
        found: dict[str, None] = {}
        source = None
        if base_dir is not None and (base_dir / path).is_file():
            source = (base_dir / path).read_text(encoding="utf-8", errors="replace")
        scopes = _scopes(source) if source is not None else []
        old_line = 0
        context = _HunkContext("")
        new_def: tuple[int, str] | None = None  # a definition this hunk adds: (indent, label)
        for line in block.splitlines():
            hunk = _HUNK_RE.match(line)
            if hunk:
                old_line, context, new_def = (
                    int(hunk.group(1)) - 1,
                    _HunkContext(hunk.group(2)),
                    None,
                )
                continue
            line = line or " "  # a blank context line whose trailing space was stripped
            if line[0] not in " +-" or line.startswith(("+++", "---")):
                continue
            kind, text = line[0], line[1:]
            indent = len(text) - len(text.lstrip())
            if kind != "+":
                old_line += 1
            if not text.strip():
                continue
            if kind == " ":
                context.see(text)
                if new_def and indent <= new_def[0]:
                    new_def = None
                continue
            if kind == "+" and new_def and indent > new_def[0]:
                found.setdefault(new_def[1], None)
                context.see(text)
                continue
            new_def = None
            if scopes:
                # a removed line lies in its own scope; an added one in the scope of the base
                # line before it, if indented deeper than that scope's header
                outer = _enclosing(scopes, old_line, indent) if old_line else None
            else:
                outer = context.outer(indent)
            context.see(text)
            definition = _DEF_RE.match(text)
            if definition and outer is None:
                region = _label(definition.group(3), definition.group(2) == "def")
            elif definition and not outer.endswith("()"):  # a method
                region = _label(f"{outer}.{definition.group(3)}", definition.group(2) == "def")
            else:  # a statement, or a helper nested in a function
                region = outer or MODULE_LEVEL
            if definition and kind == "+":
                new_def = (indent, region)
            found.setdefault(region, None)
        regions[path] = list(found)
    return regions


def _describe(path: str, regions: list[str]) -> str:
    """`path` with at most MAX_REGIONS region names: "`a.py` (`f()`, `C.g()`)". Module level
    is left out when the file has named regions (imports alone are not worth a line in a plan).
    """
    named = _named(regions)
    if not named:
        return f"`{path}`"
    shown = ", ".join(f"`{r}`" for r in named[:MAX_REGIONS])
    more = f" and {len(named) - MAX_REGIONS} more" if len(named) > MAX_REGIONS else ""
    return f"`{path}` ({shown}{more})"


def _named(regions: list[str]) -> list[str]:
    """Regions worth naming in a plan: not module level, and not a class whose methods are
    named anyway (a class line is usually its docstring or a field next to them)."""
    return [
        r for r in regions if r != MODULE_LEVEL and not any(o.startswith(f"{r}.") for o in regions)
    ]


def _bare(name: str) -> str:
    return name.removesuffix("()")


_PRONOUN_RE = re.compile(r"\b(I(?:['\u2019](?:ll|m|d))?|[Mm]y|[Ww]e|[Yy]ou|[Yy]our)\b")


def _claimed(text: str, paths: list[str]) -> list[str]:
    """The paths `text`'s author claims for itself: the last pronoun before a mention decides
    ("I'll take `a`; you keep `b`" claims `a`, not `b`); a path no pronoun precedes counts as
    claimed. A path is claimed if any of its mentions is."""
    out = []
    for path in paths:
        for m in re.finditer(rf"(?<![\w/.-]){re.escape(path)}(?![\w/])", text):
            pronouns = _PRONOUN_RE.findall(text[: m.start()])
            if not pronouns or pronouns[-1].lower() not in ("you", "your"):
                out.append(path)
                break
    return out


def _partner_regions(plan: str, paths: list[str]) -> dict[str, list[str]]:
    """Function/class names in backticks in the partner's message, per path: a name belongs to
    the last path named before it ("`a.py` (`f()`, `C.g()`)"); names before any path are left
    out."""
    spans = sorted(
        (m.start(), path)
        for path in paths
        for m in re.finditer(rf"(?<![\w/.-]){re.escape(path)}(?![\w/])", plan)
    )
    out: dict[str, dict[str, None]] = {path: {} for path in paths}
    for match in _IDENT_RE.finditer(plan):
        name = match.group(1)
        if name in paths or extract_paths(name):
            continue
        owner = [path for start, path in spans if start < match.start()]
        if owner:
            out[owner[-1]].setdefault(name, None)
    return {path: list(names) for path, names in out.items()}


def _partner_unlisted(plan: str, path: str) -> int:
    """How many regions the partner left unnamed for `path` ("`a.py` (`f()`, ... and 2 more)")."""
    m = re.search(rf"`{re.escape(path)}` \([^()]*?(?:\(\)[^()]*?)* and (\d+) more\)", plan)
    return int(m.group(1)) if m else 0


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
        """Who takes which functions of each shared file: mine from my edit, theirs from the
        names the partner's plan gives for that file; code both need is flagged."""
        regions = self._regions()
        partner_regions = _partner_regions(plan, named)
        parts = []
        contested = False
        for path in shared:
            own = _named(regions.get(path, []))
            own_bare = {_bare(r) for r in own}
            theirs_here = partner_regions.get(path, [])
            both = [n for n in theirs_here if _bare(n) in own_bare]
            others = [n for n in theirs_here if _bare(n) not in own_bare][:MAX_REGIONS]
            mine_only = [r for r in own if _bare(r) not in {_bare(n) for n in both}]
            clauses = []
            if mine_only or not both:
                names = ", ".join(f"`{r}`" for r in mine_only[:MAX_REGIONS])
                clauses.append(f"I take {names or 'the parts my feature changes'}")
            if others:
                clauses.append(f"you take {', '.join(f'`{n}`' for n in others)}")
            elif not both:
                clauses.append("you take the rest of it (tell me which functions)")
            if both:
                contested = True
                clauses.append(f"we both need {', '.join(f'`{n}`' for n in both)}")
            unlisted = _partner_unlisted(plan, path)
            if unlisted:
                clauses.append(
                    f"you left {unlisted} more unnamed there: name them so we catch any clash"
                )
            parts.append(f"In `{path}` " + "; ".join(clauses) + ".")
        split = " ".join(parts)
        if contested:
            split += (
                " Where we both need the same code, I'll keep my change to its own block and "
                "we merge it with care."
            )
        return split

    def _ack(self, plan: str, mine: list[str], values: dict[str, str]) -> str:
        """Reply to the partner's plan: confirm disjoint files, split shared ones, or ask."""
        named = extract_paths(plan)
        claimed = _claimed(plan, named)  # "you edit `x`" is a guess about me, not a claim
        if not claimed:
            return self._rng.choice(ASK_FILES_ACKS).format(**values)
        shared = [p for p in mine if p in claimed]
        theirs = [p for p in claimed if p not in mine]
        if not shared:
            return self._rng.choice(ACKS).format(theirs=_quote(theirs), **values)
        split = self._split(plan, named, shared)
        if theirs:
            split += f" You also keep {_quote(theirs)}."
        return self._rng.choice(SHARED_ACKS).format(
            shared=_quote(shared), split=split, title=values["title"]
        )

    def _follow_up(self, messages: list[dict], mine: list[str]) -> str | None:
        """After my proposal: if the partner's message names one of my files and does not split
        it already (proposals crossed), the split of each shared file; else None."""
        plan = self._partner_reply(messages)
        if plan is None:
            return None
        named = extract_paths(plan)
        claimed = _claimed(plan, named)  # not the files a reply hands back to me
        shared = [p for p in mine if p in claimed and f"In `{p}`" not in plan]
        if not shared:
            return None
        split = self._split(plan, named, shared)
        return self._rng.choice(FOLLOW_UPS).format(
            shared=_quote(shared), split=split, title=feature_title(self.feature)
        )

    def _next(self, messages: list[dict]) -> tuple[str, str]:
        mine = own_files(self.feature)
        step = self._turn
        if step == 0:
            plan = self._partner_plan(messages)
            regions = self._regions()
            values = {
                "mine": ", ".join(_describe(p, regions.get(p, [])) for p in mine),
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
