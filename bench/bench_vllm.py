"""The retired hand-written server vs vLLM's CPU build, side by side in one run, under the
held-out rollouts' request pattern: N agents at once, each sending its real first turn (the
default coop prompt of a held-out feature, the bash tool) and then follow-ups that extend its
own conversation with a tool result, up to ``--max-tokens`` a turn, greedy.

The retired server is run from the last commit that had it (``--baseline-ref``, extracted with
``git archive`` into a temp dir, run with the core venv); vLLM is launched exactly as the
serving resource launches it (`serving.vllm_launch.serve_command`, the evaluation protocol's
dtype).
Reported per engine: wall time, generated tokens/s, p50/p95 request latency, peak resident
memory of the server's whole process group (sampled every 0.5 s), and the ratios.

``--adapter DIR`` compares instead how a trained adapter is served for the held-out
rollouts: as a LoRA on the base's server (vLLM's CPU LoRA kernels) vs merged into the base
(`coop_dag.training.adapters.merged_model`, the CPU default), same workload, same flags, and whether
the two answered every request with the same text (greedy).

    .venv/bin/python bench/bench_vllm.py [--agents 24] [--turns 2] [--max-tokens 256]
    .venv/bin/python bench/bench_vllm.py --adapter runs/adapters/templated/student-<sha>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from coop_dag.agent.actions import BASH_TOOL  # noqa: E402
from coop_dag.serving.probe import first_turn_messages, held_out_cases  # noqa: E402
from coop_dag.serving.vllm import VllmEngine  # noqa: E402
from coop_dag.serving.vllm_launch import (  # noqa: E402
    DEFAULT_MAX_MODEL_LEN,
    EVAL_DTYPE,
    VllmLauncher,
    VllmServeConfig,
    serve_command,
)
from coop_dag.training.students import get_student  # noqa: E402

BASELINE_REF = "c19f0e5"  # main before the hand-written server retired


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process in the process group ``pgid`` (the server and the
    engine/worker processes it forks)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss pages
        except (OSError, IndexError, ValueError):
            continue
    return total


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=3600) as resp:
        return json.loads(resp.read())


def _agent(api: str, model: str, messages: list[dict], turns: int, max_tokens: int, out: list):
    for turn in range(turns):
        started = time.monotonic()
        data = _post(
            api + "/chat/completions",
            {
                "model": model,
                "messages": messages,
                "tools": [BASH_TOOL],
                "temperature": 0.0,
                "max_tokens": max_tokens,
            },
        )
        msg = data["choices"][0]["message"]
        calls = [c.get("function") for c in msg.get("tool_calls") or []]  # ids are random
        text = (msg.get("content") or "") + json.dumps(calls)
        out.append((time.monotonic() - started, data["usage"]["completion_tokens"], text))
        messages = messages + [
            {"role": "assistant", "content": msg.get("content") or "(tool call)"},
            {"role": "user", "content": f"<returncode>0</returncode><output>{turn}</output>"},
        ]


def _workload(url: str, model: str, agents: int, turns: int, max_tokens: int, pid: int) -> dict:
    cases = held_out_cases(max_prompts=agents)
    results: list = []
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _group_rss(pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=_agent,
            args=(url + "/v1", model, first_turn_messages(c), turns, max_tokens, results),
        )
        for c in cases
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    results.sort(key=lambda r: r[2])  # answers in a comparable order
    lat = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "wall_s": round(wall, 1),
        "requests": len(results),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "p50_s": round(lat[len(lat) // 2], 1),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
        "peak_rss_gb": round(peak[0] / 2**30, 2),
        "answers": [r[2] for r in results],
    }


def _start(argv: list[str], env: dict, log: Path, url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    VllmEngine(url).wait_until_healthy(1800, interval=1.0, alive=lambda: proc.poll() is None)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _adapter_rows(args, student, tmp: Path) -> dict:
    """The adapter served as LoRA on the base's server vs merged into the base, one server
    each, launched as the serving resource launches them."""
    from coop_dag.training.adapters import adapter_name, merged_model

    name = adapter_name(args.adapter)
    rows = {}
    for mode in ("lora", "merged"):
        model = (
            str(student.model_dir)
            if mode == "lora"
            else str(merged_model(args.adapter, student.model_dir))
        )
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        config = VllmServeConfig(
            model=model, port=port, served_model_name=student.name if mode == "lora" else name,
            max_model_len=DEFAULT_MAX_MODEL_LEN, dtype=EVAL_DTYPE, device="cpu", cpu_threads=1,
            max_lora_rank=16, max_loras=2,
        )  # fmt: skip
        command = serve_command(config, VllmLauncher(python=args.vllm_python))
        t0 = time.monotonic()
        proc = _start(list(command.argv), dict(command.env), tmp / f"{mode}.log", url)
        startup = time.monotonic() - t0
        try:
            if mode == "lora":
                VllmEngine(url).load_adapter(name, str(args.adapter))
            rows[mode] = {
                **_workload(url, name, args.agents, args.turns, args.max_tokens, proc.pid),
                "startup_s": round(startup, 1),
            }
        finally:
            _stop(proc)
        print(mode, {k: v for k, v in rows[mode].items() if k != "answers"}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=24)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--adapter", type=Path, help="compare this adapter as LoRA vs merged")
    args = parser.parse_args()
    student = get_student(args.student)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    rows = {}
    if args.adapter:
        rows = _adapter_rows(args, student, tmp)
        args.skip_vllm = args.skip_baseline = True

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config = VllmServeConfig(
        model=str(student.model_dir), port=port, served_model_name=student.name,
        max_model_len=DEFAULT_MAX_MODEL_LEN, dtype=EVAL_DTYPE, device="cpu",
    )  # fmt: skip
    command = serve_command(config, VllmLauncher(python=args.vllm_python))
    if not args.skip_vllm:
        t0 = time.monotonic()
        proc = _start(list(command.argv), dict(command.env), tmp / "vllm.log", url)
        startup = time.monotonic() - t0
        try:
            rows["vllm"] = {
                **_workload(url, student.name, args.agents, args.turns, args.max_tokens, proc.pid),
                "startup_s": round(startup, 1),
            }
        finally:
            _stop(proc)
        print("vllm", rows["vllm"], flush=True)

    if not args.skip_baseline:
        src = tmp / "baseline"
        src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline_ref, "coop_dag", "configs"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        # the extracted tree's coop_dag, not the editable install's (which has no serve.py)
        launcher = (
            "import runpy, sys; "
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
            f"sys.path.insert(0, {str(src)!r}); sys.argv[0] = 'coop_dag.serve'; "
            "runpy.run_module('coop_dag.serve', run_name='__main__')"
        )
        argv = [sys.executable, "-c", launcher, "--student", student.name,
                "--port", str(port), "--threads", "0", "--batch-gap", "1.0"]  # fmt: skip
        env = {"COOP_DAG_CACHE": str(student.model_dir.parents[2])}
        t0 = time.monotonic()
        proc = _start(argv, env, tmp / "baseline.log", url)
        startup = time.monotonic() - t0
        try:
            rows["retired"] = {
                **_workload(url, student.name, args.agents, args.turns, args.max_tokens, proc.pid),
                "startup_s": round(startup, 1),
            }
        finally:
            _stop(proc)
        print("retired", rows["retired"], flush=True)

    print(f"\n{args.agents} agents x {args.turns} turns, <= {args.max_tokens} tokens a turn, "
          f"{student.name}, {os.cpu_count()} cores")  # fmt: skip
    print("| engine | wall s | tokens/s | p50 s | p95 s | peak RSS GB | start-up s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']} | {r['tokens_per_s']} | {r['p50_s']} | {r['p95_s']} | "
              f"{r['peak_rss_gb']} | {r['startup_s']} |")  # fmt: skip
    if "lora" in rows and "merged" in rows:
        m, lo = rows["merged"], rows["lora"]
        same = sum(a == b for a, b in zip(m["answers"], lo["answers"], strict=True))
        print(f"\nmerged / lora: wall x{lo['wall_s'] / m['wall_s']:.2f} faster, tokens/s "
              f"x{m['tokens_per_s'] / lo['tokens_per_s']:.2f}, "
              f"p50 x{m['p50_s'] / lo['p50_s']:.2f}; "
              f"identical answers {same}/{len(m['answers'])}")  # fmt: skip
    if "retired" in rows and "vllm" in rows:
        v, b = rows["vllm"], rows["retired"]
        print(f"\nvLLM / retired: tokens/s x{v['tokens_per_s'] / b['tokens_per_s']:.2f}, "
              f"p50 x{v['p50_s'] / b['p50_s']:.2f}, peak RSS x{v['peak_rss_gb'] / b['peak_rss_gb']:.2f}")  # noqa: E501  # fmt: skip


if __name__ == "__main__":
    main()
