"""Embedded-server benchmark, one run, same prompts, side by side:

1. in process: ``model.generate()`` on the prompt ids (``coop_dag.chat.render_ids``), greedy;
2. over HTTP: ``POST /v1/chat/completions`` to an :class:`coop_dag.serve.EmbeddedServer`
   (its own copy of the model, in a thread of this process), greedy, ``ignore_eos`` so both
   sides generate exactly ``--max-tokens`` tokens, ``return_token_ids`` to check that the
   server generated the very same ids as ``generate()``.

Prompts are first turns of held-out pairs (default coop prompt + the bash tool), i.e. what
``student_rollouts`` sends. Runs are interleaved (in-process, server, in-process, ...) so
load from other processes hits both alike; per side the best and the median wall time are
kept. The overhead ratio is server time / in-process time for the same tokens (1.00 = the
HTTP layer, rendering and response building cost nothing).

Usage: .venv/bin/python bench/bench_serve.py [--student smollm2-135m] [--prompts 3]
       [--max-tokens 64] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coop_dag import BUNDLED_DATASET  # noqa: E402
from coop_dag.actions import BASH_TOOL  # noqa: E402
from coop_dag.chat import render_ids  # noqa: E402
from coop_dag.prompts import render_prompts  # noqa: E402
from coop_dag.serve import EmbeddedServer  # noqa: E402
from coop_dag.students import get_student  # noqa: E402
from coop_dag.tasks import DEFAULT_HELD_OUT, discover_pairs  # noqa: E402


def first_turns(n: int) -> list[list[dict]]:
    """Agent1's first-turn messages on the first ``n`` held-out pairs."""
    out = []
    for pair in discover_pairs(BUNDLED_DATASET, repos=list(DEFAULT_HELD_OUT))[:n]:
        p = render_prompts(pair.features[0].description, "agent1", "agent2", steering=False)
        out.append(
            [{"role": "system", "content": p.system}, {"role": "user", "content": p.instance}]
        )
    return out


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1: on a shared 2-core machine two "
        "OpenMP threads per process thrash; 0 = torch's default)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    student = get_student(args.student)
    tok = student.load_tokenizer()
    convs = first_turns(args.prompts)
    prompts = [render_ids(tok, c, [BASH_TOOL]) for c in convs]
    model = student.load_model()
    model.eval()
    server = EmbeddedServer(student, port=0).start()
    url = server.api_base + "/chat/completions"
    T = args.max_tokens
    eos = server.engine.stop_ids

    def in_process(ids: list[int]) -> list[int]:
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=T,
                min_new_tokens=T,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=server.engine.pad_id,
            )
        return out[0, len(ids) :].tolist()

    def over_http(conv: list[dict]) -> tuple[list[int], list[int]]:
        r = post(
            url,
            {
                "model": server.engine.base_model_id,
                "messages": conv,
                "tools": [BASH_TOOL],
                "max_tokens": T,
                "ignore_eos": True,
                "temperature": 0,
                "return_token_ids": True,
            },
        )
        return r["prompt_token_ids"], r["choices"][0]["token_ids"]

    # warm-up (first-call allocations) and the identity check
    same_prompt = same_output = True
    for conv, ids in zip(convs, prompts, strict=True):
        a = in_process(ids)
        p, b = over_http(conv)
        same_prompt &= p == ids
        same_output &= a == b

    times: dict[str, list[float]] = {"in_process": [], "server": []}
    cpu: dict[str, list[float]] = {"in_process": [], "server": []}
    tokens = {"in_process": 0, "server": 0}
    for _ in range(args.repeat):
        for side in ("in_process", "server"):
            t0, c0 = time.perf_counter(), time.process_time()
            n = 0
            for conv, ids in zip(convs, prompts, strict=True):
                n += len(in_process(ids) if side == "in_process" else over_http(conv)[1])
            times[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)  # the server is a thread: counted
            tokens[side] = n
    server.stop()

    result: dict = {
        "student": student.name,
        "prompts": len(prompts),
        "prompt_tokens_mean": round(statistics.mean(len(p) for p in prompts), 1),
        "max_tokens": T,
        "repeat": args.repeat,
        "torch_threads": torch.get_num_threads(),
        "same_prompt_ids": same_prompt,
        "same_output_ids": same_output,
    }
    for side in times:
        best, med = min(times[side]), statistics.median(times[side])
        result[side] = {
            "tokens": tokens[side],
            "best_s": round(best, 3),
            "median_s": round(med, 3),
            "tokens_per_s_best": round(tokens[side] / best, 1),
            "tokens_per_s_median": round(tokens[side] / med, 1),
            "cpu_s_best": round(min(cpu[side]), 3),
        }
    result["overhead_ratio_best"] = round(
        result["server"]["best_s"] / result["in_process"]["best_s"], 3
    )
    result["overhead_ratio_median"] = round(
        result["server"]["median_s"] / result["in_process"]["median_s"], 3
    )
    result["overhead_ratio_cpu"] = round(
        result["server"]["cpu_s_best"] / result["in_process"]["cpu_s_best"], 3
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"student {result['student']}: {result['prompts']} first-turn prompts "
        f"(~{result['prompt_tokens_mean']:.0f} tokens), {T} greedy tokens each, "
        f"best/median of {args.repeat}, {result['torch_threads']} torch threads"
    )
    head = f"{'':<12}{'tokens':>8}{'best s':>9}{'tok/s':>9}{'median s':>10}{'tok/s':>9}"
    print(head + f"{'cpu s':>9}")
    for side in ("in_process", "server"):
        r = result[side]
        print(
            f"{side:<12}{r['tokens']:>8}{r['best_s']:>9.2f}{r['tokens_per_s_best']:>9.1f}"
            f"{r['median_s']:>10.2f}{r['tokens_per_s_median']:>9.1f}{r['cpu_s_best']:>9.2f}"
        )
    print(
        f"overhead ratio (server / in-process): wall best {result['overhead_ratio_best']:.3f}, "
        f"wall median {result['overhead_ratio_median']:.3f}, "
        f"cpu best {result['overhead_ratio_cpu']:.3f}"
    )
    print(
        f"server prompt ids == render_ids: {same_prompt}; "
        f"server output ids == generate(): {same_output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
