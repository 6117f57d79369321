"""Per-turn examples: one assistant turn of a trajectory as ``(prompt ids, output ids)``, by the
native path (the engine's captured ids, checked against our renderer for drift, the default
prompt spliced in) or the re-tokenised path (rendered with the student's template), then
strip-think and the end-of-turn id. ``ExampleBuilder`` does it for one trajectory at a time
and counts into ``TitoStats``; the build (:mod:`coop_dag.tito.build`) packs the results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coop_dag.agent.messaging.parser import OutgoingMessage
from coop_dag.eval.runlogs import turn_commands
from coop_dag.tito.chat import assistant_target_text, encode_rendered, render_ids, render_text
from coop_dag.tito.config import TitoConfig, TitoStats
from coop_dag.tito.errors import TemplateDriftError
from coop_dag.tito.tokens import TokenVocab, first_diff, strip_think_ids
from coop_dag.tito.trajectories import Trajectory, default_prompt_messages

SOURCES = ("native", "retokenised")


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


class ExampleBuilder:
    """Per-turn examples of trajectories for one tokenizer, template and config."""

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
        """The trajectory's examples in turn order; turns dropped by strip-think are left out."""
        msgs = traj.messages
        default_msgs = default_prompt_messages(msgs, self.cfg.strip_steering)
        turns = self._turns(msgs)
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

    def _turns(self, msgs: Sequence[dict]) -> list[_Turn]:
        """The assistant turns to train on, numbered over every assistant turn (a skipped
        actionless turn keeps its number; a context-compaction summary has none)."""
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
        return turns

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
                    traj.traj_id, t.turn, first_diff(rendered, captured), rendered, captured
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
