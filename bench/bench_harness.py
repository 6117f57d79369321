"""Harness overhead per agent step: everything in a CoopAgent step except the model and the
command itself, with an instant scripted model, a real Redis-protocol server (embedded
Valkey) and a real bubblewrap sandbox on a bundled task.

    .venv/bin/python bench/bench_harness.py [--episodes 8] [--reps 40]

Three views:

1. Agent steps (`CoopAgent.step()`), instrumented: the model's and the sandbox's time are
   measured and subtracted, leaving the harness's own time per step (inbox poll and
   departure check over Redis, context estimate, recording, action parsing, send_message
   parsing and delivery, observation formatting). Run with a null sandbox (the command costs
   nothing) and with the real bubblewrap sandbox running `true`.
2. The same parts timed one at a time (per call).
3. Process start-up, to split the per-command sandbox cost: a bare `true`, `bash -lc true`,
   bwrap + `true`, bwrap + `bash -lc true` (what every agent command pays).

Every row: median and spread (p25-p75 and p10-p90) in milliseconds over N samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.agent.actions import parse_actions, to_qwen_xml  # noqa: E402
from coop_dag.agent.loop import AgentLimits, CoopAgent, approx_tokens  # noqa: E402
from coop_dag.agent.messaging.bus import MessageBus, format_inbox, new_run_prefix  # noqa: E402
from coop_dag.agent.messaging.parser import parse_send_message  # noqa: E402
from coop_dag.agent.models import ModelResponse  # noqa: E402
from coop_dag.agent.prompts import render_prompts  # noqa: E402
from coop_dag.agent.redis_server import EmbeddedRedis, connect  # noqa: E402
from coop_dag.agent.sandbox.base import CommandResult, format_observation  # noqa: E402
from coop_dag.agent.sandbox.bwrap import bwrap_argv, bwrap_status  # noqa: E402
from coop_dag.agent.sandbox.local import LocalSandbox  # noqa: E402
from coop_dag.agent.sandbox.process import _run_process  # noqa: E402
from coop_dag.dataset.discovery import discover_pairs  # noqa: E402

SEND = "send_message agent2 <<'MSG'\nI'll take src/datehelp/parsing.py; you keep humanize.py.\nMSG"


# --------------------------------------------------------------------------- statistics


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def row(name: str, secs: list[float]) -> str:
    ms = [x * 1000 for x in secs]
    return (
        f"{name:<46} {len(ms):>5} {statistics.median(ms):>9.3f} "
        f"{pct(ms, 0.25):>8.3f}-{pct(ms, 0.75):<8.3f} {pct(ms, 0.10):>8.3f}-{pct(ms, 0.90):<8.3f}"
    )


def header(title: str) -> str:
    return (
        f"\n{title}\n{'':<46} {'N':>5} {'median':>9} {'p25-p75 (IQR)':^17} {'p10-p90':^17}\n"
        + "-" * 98
    )


def timeit(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- instruments


class Clock:
    def __init__(self) -> None:
        self.spent = 0.0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.spent += time.perf_counter() - t0

        return timed


class InstantModel:
    """Answers at once, cycling through the surface forms a real run sees: tool_calls,
    Qwen inline XML, a send_message, and (every 4th turn) a partner message for the next
    inbox poll to deliver."""

    name = "instant"

    def __init__(self, partner: MessageBus) -> None:
        self.turn = 0
        self.partner = partner
        tc = lambda cmd: {  # noqa: E731
            "id": "call_0",
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": cmd})},
        }
        self.script = [
            ModelResponse("Looking around.", [tc("true")]),
            ModelResponse("Checking again.\n\n" + to_qwen_xml("true")),
            ModelResponse("Telling my colleague.", [tc(SEND + "\ntrue")]),
            ModelResponse(to_qwen_xml("true")),
        ]

    def query(self, messages: list[dict], tools: list[dict]) -> ModelResponse:
        r = self.script[self.turn % len(self.script)]
        if self.turn % 4 == 3:  # outside the measured harness time (inside the model's)
            self.partner.send("agent1", "Ack, humanize.py is mine.")
        self.turn += 1
        return r


class NullSandbox:
    """A sandbox whose commands cost nothing (isolates the harness)."""

    workdir = "/nonexistent"
    base_sha = "0" * 40
    timeout = 10.0

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        return CommandResult("", 0, False, 0.0)


def agent_steps(client, pair, sandbox, episodes: int, steps: int) -> dict[str, list[float]]:
    """Per-step totals and their parts over `episodes` fresh agents of `steps` steps."""
    feature = pair.features[0]
    prompts = render_prompts(feature.description, "agent1", "agent2", steering=False)
    out: dict[str, list[float]] = {
        "step": [],
        "model": [],
        "command": [],
        "redis": [],
        "harness": [],
    }
    for _ in range(episodes):
        prefix = new_run_prefix()
        bus = MessageBus(client, prefix, "agent1", agents=["agent1", "agent2"])
        partner = MessageBus(client, prefix, "agent2", agents=["agent1", "agent2"])
        model_clock, sandbox_clock, redis_clock = Clock(), Clock(), Clock()
        model = InstantModel(partner)
        model.query = model_clock.wrap(model.query)
        sandbox.run = sandbox_clock.wrap(type(sandbox).run.__get__(sandbox))
        for name in ("receive", "partner_exited", "send", "wait_for_reply"):
            setattr(bus, name, redis_clock.wrap(getattr(bus, name)))
        agent = CoopAgent(
            "agent1", "agent2", model, sandbox, bus, prompts,
            limits=AgentLimits(max_steps=steps + 1, command_timeout=10.0),
        )  # fmt: skip
        agent.messages = [
            {"role": "system", "content": prompts.system},
            {"role": "user", "content": prompts.instance},
        ]
        bus.mark_alive()
        for _ in range(steps):
            m0, s0, r0 = model_clock.spent, sandbox_clock.spent, redis_clock.spent
            t0 = time.perf_counter()
            agent.step()
            total = time.perf_counter() - t0
            m, s, r = (
                model_clock.spent - m0,
                sandbox_clock.spent - s0,
                redis_clock.spent - r0,
            )
            assert agent.status == "Running", agent.status
            out["step"].append(total)
            out["model"].append(m)
            out["command"].append(s)
            out["redis"].append(r)
            out["harness"].append(total - m - s)
        bus.mark_exited()
        client.delete(bus.inbox_key("agent2"), bus.exited_key(), bus.inbox_key())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8, help="fresh agents per sandbox kind")
    ap.add_argument("--steps", type=int, default=30, help="steps per agent (default: 30)")
    ap.add_argument("--reps", type=int, default=40, help="samples per process start-up row")
    args = ap.parse_args()
    ok, info = bwrap_status()
    if not ok:
        sys.exit(f"bubblewrap unusable: {info}")
    started = time.perf_counter()
    pair = {p.pair_id: p for p in discover_pairs(BUNDLED_DATASET)}["datehelp_task/106/f1_f3"]
    scratch = Path(tempfile.mkdtemp(prefix="coop-bench-"))
    lines: list[str] = []
    try:
        with EmbeddedRedis() as server:
            client = connect(server.url)
            agent_steps(client, pair, NullSandbox(), 1, 10)  # warm-up

            # 1. whole steps
            null = agent_steps(client, pair, NullSandbox(), args.episodes, args.steps)
            with LocalSandbox(pair.task, scratch / "sbx") as sb:
                real = agent_steps(client, pair, sb, max(2, args.episodes // 2), args.steps)
            python_part = [h - r for h, r in zip(null["harness"], null["redis"], strict=True)]
            lines.append(header(f"1. CoopAgent.step(), instant model ({args.steps}-step agents)"))
            lines += [
                row("null sandbox: whole step", null["step"]),
                row("null sandbox: harness (step - model - command)", null["harness"]),
                row("  of which Redis (inbox poll, exit check, send)", null["redis"]),
                row("  of which Python (harness - Redis)", python_part),
                row("bwrap sandbox: whole step", real["step"]),
                row("bwrap sandbox: harness (step - model - command)", real["harness"]),
                row("bwrap sandbox: command (bwrap + bash -lc true)", real["command"]),
            ]  # fmt: skip

            # 2. parts, one call at a time
            prefix = new_run_prefix()
            bus = MessageBus(client, prefix, "agent1", agents=["agent1", "agent2"])
            partner = MessageBus(client, prefix, "agent2", agents=["agent1", "agent2"])
            model = InstantModel(partner)
            tool_turn, xml_turn = model.script[0], model.script[1]
            obs_text = "x = 1\n" * 40
            history = json.loads(json.dumps(_history(args.steps)))
            n = 2000

            def send_and_drain() -> None:
                bus.send("agent2", "hello")
                partner.receive()

            inbox_msg = [{"from": "agent2", "content": "hi", "timestamp": 1.0}]
            parts: list[tuple[str, Callable[[], object], int]] = [
                ("Redis: receive() on an empty inbox", bus.receive, n // 4),
                ("Redis: partner_exited()", lambda: bus.partner_exited("agent2"), n // 4),
                ("Redis: send() + partner receive()", send_and_drain, n // 4),
                ("parse_actions: tool_calls",
                 lambda: parse_actions(tool_turn.content, tool_turn.tool_calls), n),
                ("parse_actions: Qwen inline XML",
                 lambda: parse_actions(xml_turn.content, None), n),
                ("parse_send_message: no send_message",
                 lambda: parse_send_message("git status --short"), n),
                ("parse_send_message: heredoc send + command",
                 lambda: parse_send_message(SEND + "\ntrue"), n),
                ("format_observation (240 chars)", lambda: format_observation(obs_text, 0), n),
                ("format_inbox (one message)", lambda: format_inbox(inbox_msg), n),
                (f"approx_tokens over a {args.steps}-step history",
                 lambda: approx_tokens(history), n // 4),
            ]  # fmt: skip
            lines.append(header("2. Harness parts, per call"))
            lines += [row(name, timeit(fn, reps)) for name, fn, reps in parts]
            bus.reset()
            partner.reset()
            client.close()

        # 3. process start-up
        with LocalSandbox(pair.task, scratch / "sbx2") as sb:
            env = sb.env
            ws = sb.workdir
            runner = sb._runner
            bwrap_true = bwrap_argv(
                ws, "", writable=[runner.home], ro_binds=runner.ro_binds, hidden=runner.hidden,
                system=runner.system, symlinks=runner.symlinks, bwrap=runner.bwrap,
                shell=("true",),
            )[:-1]  # fmt: skip

            def spawn(argv: list[str]) -> Callable[[], None]:
                return lambda: _run_process(argv, env=env, cwd=ws, timeout=30)

            reps = args.reps
            spawn_rows = {
                "true (fork/exec + output reader)": timeit(spawn(["true"]), reps),
                "bash -lc true (login shell)": timeit(spawn(["bash", "-lc", "true"]), reps),
                "bwrap ... true": timeit(spawn(bwrap_true), reps),
                "bwrap ... bash -lc true  = sandbox.run('true')": timeit(
                    lambda: sb.run("true"), reps
                ),
            }
        lines.append(header("3. Process start-up per command"))
        lines += [row(k, v) for k, v in spawn_rows.items()]
        med = {k: statistics.median(v) * 1000 for k, v in spawn_rows.items()}
        keys = list(med)
        lines.append("-" * 98)
        bwrap_cost = med[keys[2]] - med[keys[0]]
        login_cost = med[keys[3]] - med[keys[2]]
        lines.append(f"bwrap start-up overhead (bwrap+true - true):        {bwrap_cost:7.2f} ms")
        lines.append(f"login-shell cost inside (sandbox.run - bwrap+true): {login_cost:7.2f} ms")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))
    print(f"\n(total bench time {time.perf_counter() - started:.1f} s, {os.cpu_count()} CPUs)")


def _history(steps: int) -> list[dict]:
    """A realistic message list after `steps` steps (system, task, turn + observation)."""
    msgs = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "t" * 4000}]
    for k in range(steps):
        msgs.append(
            {"role": "assistant", "content": "thinking " * 20, "extra": {"timestamp": 1.0 * k}}
        )
        msgs.append(
            {
                "role": "tool",
                "content": format_observation("line\n" * 60, 0),
                "extra": {"returncode": 0, "timestamp": 1.0},
            }
        )
    return msgs


if __name__ == "__main__":
    main()
