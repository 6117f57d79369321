"""Reading rollout logs in CooperBench's layout, and turning a trajectory into actions.

Layout (produced by our runtime and by CooperBench itself)::

    <run>/coop/<repo>/<task_id>/f<a>_f<b>/
        agent<a>_traj.json  agent<b>_traj.json  agent<a>.patch  agent<b>.patch
        conversation.json   result.json         eval.json

A trajectory is ``{repo, task_id, feature_id, agent_id, model, status, cost, steps, prompt,
messages}``. What an agent *did* is read per assistant turn: the executed commands recorded in
``extra.actions`` (strings from our runtime; ``{tool_name, command | recipient, content}`` dicts
from CooperBench's mini_swe_agent_v2), or, for external logs without it, the commands
``coop_dag.agent.actions.parse_actions`` finds in ``tool_calls`` and in Qwen inline ``<tool_call>``
XML in ``content`` (markdown bash blocks and narration are not actions). Each command is split by
``agent.messaging.parser.parse_send_message`` into the messages it sends and the other bash it runs;
a structured ``send_message`` tool call is a message and no bash.

Agent names: files are ``agent<feature id>``, but the name an agent sends under is its
trajectory's ``agent_id`` (CooperBench and our episode runner use ``agent1``/``agent2`` by
position, so in pair f2_f3 ``agent3_traj.json`` says ``agent_id: agent2``).

What an agent *received* from its partner is every ``[Message from <partner>]:`` in a user
message (inbox delivery) or a tool/observation message (a ``send_message --wait`` reply).
A received message counts as received before an action when it sits earlier in the message list
than the assistant turn that issued the action, i.e. the model had it in context when it decided
to act. (So a ``--wait`` reply counts for the *next* turn's commands, not for other commands
issued in the same turn as the wait.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coop_dag.agent.actions import parse_actions
from coop_dag.agent.messaging.errors import MessagingError
from coop_dag.agent.messaging.parser import OutgoingMessage, parse_send_message

PAIR_DIR_RE = re.compile(r"^f(\d+)_f(\d+)$")
# `[Message from agent2]: ...` -- an inbox delivery, or a `--wait` reply inside an observation.
RECEIVED_RE = re.compile(r"\[Message from ([\w.-]+)\]:")
# Shell separators left over around a command once its send_message calls are taken out.
_SEPARATORS = " \t\r\n;&|"


class RunLogError(ValueError):
    """A run directory or log file that cannot be read; the message names the path."""


# -- the run directory ------------------------------------------------------------------------


@dataclass
class PairLog:
    """One feature pair's logs. `trajectories` maps `agent<fid>` to the parsed trajectory, or to
    None when the file is missing or unreadable (the reason is in `errors`)."""

    repo: str
    task_id: str
    feature_a: int
    feature_b: int
    dir: Path
    trajectories: dict[str, dict | None] = field(default_factory=dict)
    eval: dict | None = None
    errors: list[str] = field(default_factory=list)
    # `agent<fid>` -> the text of its final `agent<fid>.patch`, or None when there is none.
    patches: dict[str, str | None] = field(default_factory=dict)

    @property
    def pair_id(self) -> str:
        return f"{self.repo}/{self.task_id}/f{self.feature_a}_f{self.feature_b}"

    @property
    def task_key(self) -> str:
        return f"{self.repo}/{self.task_id}"

    @property
    def agent_ids(self) -> tuple[str, str]:
        return (f"agent{self.feature_a}", f"agent{self.feature_b}")


def coop_root(run_dir: str | Path) -> Path:
    """The `coop/` directory of a run (`run_dir/coop`, or `run_dir` itself if named `coop`)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunLogError(f"run directory does not exist or is not a directory: {run}")
    if (run / "coop").is_dir():
        return run / "coop"
    if run.name == "coop":
        return run
    raise RunLogError(
        f"not a CooperBench run directory (no coop/ folder): {run} -- expected "
        "<run>/coop/<repo>/<task_id>/f<a>_f<b>/agent<fid>_traj.json"
    )


def _pair_dirs(root: Path) -> list[tuple[str, str, int, int, Path]]:
    found = []
    for repo_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for task_dir in sorted(p for p in repo_dir.iterdir() if p.is_dir()):
            for pair_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
                m = PAIR_DIR_RE.match(pair_dir.name)
                if m:
                    a, b = int(m.group(1)), int(m.group(2))
                    found.append((repo_dir.name, task_dir.name, a, b, pair_dir))
    found.sort(key=lambda t: (t[0], _natural(t[1]), t[2], t[3]))
    return found


def _natural(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", name)
    return (int(digits) if digits else -1, name)


def iter_pairs(run_dir: str | Path) -> Iterator[PairLog]:
    """Every feature pair under `run_dir` (sorted by repo, task, features).

    Raises RunLogError at once (not on first iteration) when `run_dir` is not in CooperBench's
    layout or holds no `f<a>_f<b>` pair directory. Unreadable files do not raise: they are
    recorded in the PairLog's `errors` (naming the path) and that agent is treated as missing.
    """
    root = coop_root(run_dir)
    dirs = _pair_dirs(root)
    if not dirs:
        raise RunLogError(
            f"no pair directories (<repo>/<task_id>/f<a>_f<b>/) under {root} -- "
            "not a CooperBench coop run"
        )
    return (load_pair(d, repo=r, task_id=t, feature_a=a, feature_b=b) for r, t, a, b, d in dirs)


def load_pair(
    pair_dir: str | Path,
    *,
    repo: str | None = None,
    task_id: str | None = None,
    feature_a: int | None = None,
    feature_b: int | None = None,
) -> PairLog:
    """One pair directory; repo/task/features default to what the path says."""
    pair_dir = Path(pair_dir)
    if feature_a is None or feature_b is None:
        m = PAIR_DIR_RE.match(pair_dir.name)
        if not m:
            raise RunLogError(f"not a pair directory (expected f<a>_f<b>): {pair_dir}")
        feature_a, feature_b = int(m.group(1)), int(m.group(2))
    pair = PairLog(
        repo=repo or pair_dir.parent.parent.name,
        task_id=task_id or pair_dir.parent.name,
        feature_a=feature_a,
        feature_b=feature_b,
        dir=pair_dir,
    )
    for agent_id in pair.agent_ids:
        path = pair_dir / f"{agent_id}_traj.json"
        if not path.exists():
            pair.trajectories[agent_id] = None
            pair.errors.append(f"{path}: missing trajectory file")
            continue
        try:
            pair.trajectories[agent_id] = load_trajectory(path)
        except RunLogError as err:
            pair.trajectories[agent_id] = None
            pair.errors.append(str(err))
    for agent_id in pair.agent_ids:
        patch = pair_dir / f"{agent_id}.patch"
        try:
            pair.patches[agent_id] = (
                patch.read_text(encoding="utf-8", errors="replace") if patch.is_file() else None
            )
        except OSError as err:
            pair.patches[agent_id] = None
            pair.errors.append(f"{patch}: cannot read patch ({err})")
    eval_path = pair_dir / "eval.json"
    if eval_path.exists():
        try:
            data = json.loads(eval_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not a JSON object")
            pair.eval = data
        except (OSError, ValueError) as err:
            pair.errors.append(f"{eval_path}: unreadable eval.json ({err})")
    return pair


def load_trajectory(path: str | Path) -> dict:
    """A trajectory file as a dict; RunLogError (naming the path) if it is not valid JSON, not an
    object, or its `messages` is not a list of objects."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RunLogError(f"{path}: cannot read trajectory ({err})") from err
    except json.JSONDecodeError as err:
        raise RunLogError(f"{path}: malformed JSON in trajectory ({err})") from err
    problem = trajectory_problem(data)
    if problem:
        raise RunLogError(f"{path}: {problem}")
    return data


def trajectory_problem(data: Any) -> str | None:
    """Why `data` is not a usable trajectory (None when it is): not an object, or `messages`
    missing or not a list of objects. A trajectory without `messages` is malformed, not an agent
    that did nothing: scoring it as 0 would hide the fault (issue 17)."""
    if not isinstance(data, dict):
        return "trajectory is not a JSON object"
    if "messages" not in data:
        return "trajectory has no 'messages' field"
    messages = data["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "trajectory 'messages' is not a list of objects"
    return None


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One executed command of an agent.

    `index` is its position among all the agent's commands, `turn` the index of the assistant
    turn that issued it (among assistant turns), `message_index` that turn's index in
    `messages`. `sends` are the send_message calls in it, `bash` the rest of the command
    ('' when it only sent messages). `received_before` counts partner messages the agent had
    received before the issuing turn.
    """

    index: int
    turn: int
    message_index: int
    command: str
    sends: tuple[OutgoingMessage, ...]
    bash: str
    received_before: int
    timestamp: float | None = None
    error: str | None = None  # a malformed send_message: nothing was sent and nothing ran
    # The observation answering this action: its return code (None when no observation or no
    # code was recorded) and text. Tool messages, or user messages carrying extra.returncode
    # (inline-XML actions), answer a turn's actions in order.
    returncode: int | None = None
    output: str | None = None

    @property
    def is_send(self) -> bool:
        return bool(self.sends)

    @property
    def has_bash(self) -> bool:
        return bool(self.bash)


@dataclass(frozen=True)
class Received:
    """A message from the partner: `via` is "inbox" (a user message) or "observation" (a tool
    observation, e.g. a `send_message --wait` reply); `before_action` is the index of the first
    action issued after it (== number of actions when none was)."""

    sender: str
    body: str
    message_index: int
    before_action: int
    via: str


@dataclass(frozen=True)
class AgentTimeline:
    agent_id: str | None
    n_assistant_turns: int
    actions: tuple[Action, ...]
    received: tuple[Received, ...]

    @property
    def first_send(self) -> Action | None:
        return next((a for a in self.actions if a.is_send), None)

    @property
    def first_message(self) -> OutgoingMessage | None:
        action = self.first_send
        return action.sends[0] if action else None

    def received_before(self, action_index: int) -> int:
        """Partner messages received before the action at `action_index` (or before the end of
        the trajectory when `action_index == len(actions)`)."""
        return sum(1 for r in self.received if r.before_action <= action_index)


def turn_commands(message: dict) -> list[str | OutgoingMessage]:
    """What one assistant message executed, in order: bash command strings, and
    OutgoingMessage for a structured `send_message` *tool* call (CooperBench's
    mini_swe_agent_v2 offers one next to `bash`: `{recipient, content}`).

    `extra.actions` is authoritative when recorded, even if empty: our runtime stores command
    strings; CooperBench stores `{tool_name, tool_call_id, command | recipient, content}`
    dicts. Otherwise the shared parse_actions reads `bash` tool_calls, or inline Qwen XML in
    content; markdown blocks and narration are not actions. Assistant messages that are
    context-compaction summaries (`extra.summary`) executed nothing.
    """
    extra = message.get("extra") or {}
    if not isinstance(extra, dict):
        extra = {}
    if extra.get("summary"):
        return []
    if isinstance(extra.get("actions"), list):
        return [a for a in (_recorded_action(x) for x in extra["actions"]) if a is not None]
    tool_calls = message.get("tool_calls") or []
    if any(_tool_call_name(tc) == "send_message" for tc in tool_calls):
        out: list[str | OutgoingMessage] = []
        for tc in tool_calls:
            if _tool_call_name(tc) == "send_message":
                sent = _tool_send(_tool_call_args(tc))
                if sent is not None:
                    out.append(sent)
            else:
                out.extend(parse_actions(None, [tc]))
        return out
    return list(parse_actions(_text(message.get("content")), tool_calls))


def _recorded_action(item: Any) -> str | OutgoingMessage | None:
    if isinstance(item, str):
        return item if item.strip() else None
    if not isinstance(item, dict):
        return None
    if item.get("tool_name") == "send_message":
        return _tool_send(item)
    command = item.get("command")
    if isinstance(command, str) and command.strip() and item.get("tool_name", "bash") == "bash":
        return command
    return None


def _tool_call_name(tc: Any) -> str | None:
    fn = tc.get("function") if isinstance(tc, dict) else getattr(tc, "function", None)
    name = fn.get("name") if isinstance(fn, dict) else getattr(fn, "name", None)
    return name if isinstance(name, str) else None


def _tool_call_args(tc: Any) -> dict:
    fn = tc.get("function") if isinstance(tc, dict) else getattr(tc, "function", None)
    raw = fn.get("arguments") if isinstance(fn, dict) else getattr(fn, "arguments", None)
    if isinstance(raw, dict):
        return raw
    try:
        args = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return args if isinstance(args, dict) else {}


def _tool_send(args: dict) -> OutgoingMessage | None:
    to, content = args.get("recipient", args.get("to")), args.get("content", args.get("message"))
    if not isinstance(to, str) or not isinstance(content, str) or not content.strip():
        return None
    return OutgoingMessage(to=to, content=content, wait=bool(args.get("wait", False)))


def _describe_tool_send(msg: OutgoingMessage) -> str:
    return f"send_message tool call (to {msg.to}): {msg.content}"


def split_command(command: str) -> tuple[tuple[OutgoingMessage, ...], str, str | None]:
    """(messages sent, remaining bash, error) of one command. A malformed send_message
    (unterminated heredoc or quote, no body, ...) is neither: the runtime refuses the whole
    command, so nothing is sent and nothing runs; `error` says why."""
    try:
        parsed = parse_send_message(command)
    except MessagingError as err:
        return (), "", str(err)
    return tuple(parsed.messages), (parsed.remainder or "").strip(_SEPARATORS), None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def self_id(traj: dict) -> str | None:
    """The name an agent sends under: its `agent_id`, else `agent<feature_id>`."""
    if traj.get("agent_id"):
        return str(traj["agent_id"])
    if traj.get("feature_id") is not None:
        return f"agent{traj['feature_id']}"
    return None


def agent_timeline(traj: dict, partner: str | Iterable[str] | None = None) -> AgentTimeline:
    """Actions and partner messages of one trajectory, in order.

    `partner`: the name(s) the partner sends under; None means anyone but this agent (a pair
    has exactly two agents). The task message (first user message) is never an inbox delivery.
    """
    me = self_id(traj)
    if partner is None:
        partners = None
    else:
        partners = {partner} if isinstance(partner, str) else set(partner)
        partners.discard(me)

    messages = traj.get("messages") or []
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    actions: list[Action] = []
    pending: list[tuple[str, str, int, str]] = []  # received, waiting for the next action index
    received: list[Received] = []
    n_turns = 0
    turn_start, answered = 0, 0  # the current turn's first action, and how many got an answer
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if (
            role in ("user", "tool")
            and i != first_user
            and (role == "tool" or _is_observation(msg) or _looks_like_observation(msg))
        ):
            if turn_start + answered < len(actions):
                k = turn_start + answered
                text = _text(msg.get("content"))
                actions[k] = replace(actions[k], returncode=_returncode(msg, text), output=text)
                answered += 1
        if role == "assistant":
            if isinstance(msg.get("extra"), dict) and msg["extra"].get("summary"):
                continue  # a context-compaction summary, not a turn of the agent
            turn = n_turns
            n_turns += 1
            commands = turn_commands(msg)
            if not commands:
                continue
            received.extend(Received(s, b, mi, len(actions), via) for s, b, mi, via in pending)
            pending.clear()
            turn_start, answered = len(actions), 0
            ts = (msg.get("extra") or {}).get("timestamp")
            for item in commands:
                if isinstance(item, OutgoingMessage):
                    command, sends, bash, error = _describe_tool_send(item), (item,), "", None
                else:
                    command = item
                    sends, bash, error = split_command(command)
                actions.append(
                    Action(
                        index=len(actions),
                        turn=turn,
                        message_index=i,
                        command=command,
                        sends=sends,
                        bash=bash,
                        received_before=len(received),
                        timestamp=float(ts) if isinstance(ts, int | float) else None,
                        error=error,
                    )
                )
        elif role in ("user", "tool") and i != first_user:
            via = "inbox" if role == "user" and not _is_observation(msg) else "observation"
            for sender, body in _partner_messages(_text(msg.get("content")), me, partners):
                pending.append((sender, body, i, via))
    received.extend(Received(s, b, mi, len(actions), via) for s, b, mi, via in pending)
    return AgentTimeline(me, n_turns, tuple(actions), tuple(received))


def agent_actions(traj: dict, partner: str | Iterable[str] | None = None) -> list[Action]:
    """The agent's executed commands, in order, classified (see `Action`)."""
    return list(agent_timeline(traj, partner).actions)


# The return code inside an observation's text: our runtime's JSON rendering, or CooperBench's
# `<returncode>N</returncode>`; used when a log has no extra.returncode.
_RETURNCODE_RE = re.compile(r'"returncode":\s*(-?\d+)|<returncode>\s*(-?\d+)\s*</returncode>')


def _returncode(msg: dict, text: str) -> int | None:
    extra = msg.get("extra") or {}
    code = extra.get("returncode") if isinstance(extra, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    m = _RETURNCODE_RE.search(text or "")
    return int(m.group(1) or m.group(2)) if m else None


def _looks_like_observation(msg: dict) -> bool:
    """A user message that is a command's result by its text (mini-swe-agent's
    `<returncode>N</returncode>` form), for logs that record no extra.returncode."""
    return _text(msg.get("content")).lstrip().startswith("<returncode>")


def _is_observation(msg: dict) -> bool:
    extra = msg.get("extra") or {}
    return isinstance(extra, dict) and "returncode" in extra


def _partner_messages(text: str, me: str | None, partners: set[str] | None):
    """(sender, body) for every `[Message from X]:` in `text` sent by the partner; a body runs
    to the next such marker."""
    matches = list(RECEIVED_RE.finditer(text or ""))
    for n, m in enumerate(matches):
        sender = m.group(1)
        if sender == me or (partners is not None and sender not in partners):
            continue
        end = matches[n + 1].start() if n + 1 < len(matches) else len(text)
        yield sender, text[m.end() : end].strip()
