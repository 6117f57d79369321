"""Embedded-engine throughput under the held-out rollouts' request pattern, one run, side by
side: ``--agents`` agents send their first turn at once, then each sends its second turn
(first turn + its reply + a tool result) as soon as its reply is back. Three engines, same
prompts, same weights, greedy with ``ignore_eos`` so every configuration generates exactly
the same number of tokens:

- ``serial``: one request at a time, every prompt prefilled in full (the server before
  batching);
- ``batched``: concurrent requests generated as one left-padded batch, no prefix cache;
- ``batched+prefix``: batching plus the prefix cache (turn 2 only runs its new ids).

Configurations are interleaved per repeat so load from other processes hits them alike; the
ratio is serial wall time / configuration wall time (higher is faster).

Usage: .venv/bin/python bench/bench_batching.py [--student smollm2-135m] [--agents 8]
       [--max-tokens 64] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.actions import BASH_TOOL  # noqa: E402
from coop_dag.chat import render_ids  # noqa: E402
from coop_dag.prompts import render_prompts  # noqa: E402
from coop_dag.serve import ChatEngine, SamplingParams  # noqa: E402
from coop_dag.tasks import DEFAULT_HELD_OUT, discover_pairs  # noqa: E402

CONFIGS = {
    "serial": {"max_batch": 1, "prefix_cache_tokens": 0},
    "batched": {"prefix_cache_tokens": 0},
    "batched+prefix": {},
}
TOOL_RESULT = '{"returncode": 0, "output": "src/pkg/core.py:12:def handle(request):"}'


def first_turn_messages(n: int) -> list[list[dict]]:
    """The first turn of each agent of the first held-out pairs (default coop prompt)."""
    out = []
    for pair in discover_pairs(BUNDLED_DATASET, repos=list(DEFAULT_HELD_OUT)):
        for feature, me, partner in ((0, "agent1", "agent2"), (1, "agent2", "agent1")):
            p = render_prompts(pair.features[feature].description, me, partner, steering=False)
            out.append(
                [{"role": "system", "content": p.system}, {"role": "user", "content": p.instance}]
            )
            if len(out) == n:
                return out
    return out


def run_agents(engine: ChatEngine, messages: list[list[dict]], max_tokens: int) -> float:
    """Wall seconds for every agent's two turns, agents concurrent."""
    tok = engine.tokenizer
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)

    def agent(msgs: list[dict]) -> None:
        prompt = render_ids(tok, msgs, [BASH_TOOL])
        reply = engine.generate(prompt, None, params)
        turn2 = [
            *msgs,
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": TOOL_RESULT},
        ]
        engine.generate(render_ids(tok, turn2, [BASH_TOOL]), None, params)

    threads = [threading.Thread(target=agent, args=(m,)) for m in messages]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    messages = first_turn_messages(args.agents)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    stats: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name, kwargs in CONFIGS.items():
            engine = ChatEngine(args.student, **kwargs).load()  # a fresh, empty cache
            times[name].append(run_agents(engine, messages, args.max_tokens))
            stats[name] = dict(engine.stats)
            del engine
    serial = statistics.median(times["serial"])
    result = {
        "student": args.student,
        "agents": len(messages),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "seconds": times,
        "speedup_over_serial": {n: serial / statistics.median(t) for n, t in times.items()},
        "engine_stats": stats,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(messages)} agents x 2 turns, {args.max_tokens} tokens per turn:")
        for name, t in times.items():
            st = stats[name]
            print(
                f"  {name:15s} median {statistics.median(t):7.1f}s  "
                f"x{result['speedup_over_serial'][name]:.2f}  batches {st.get('batches')}  "
                f"prefilled {st.get('prefill_tokens')}  cached {st.get('cached_tokens')}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
