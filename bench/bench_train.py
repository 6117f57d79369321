"""Training throughput of the embedded trainer, packed rows vs one row per turn, on the same
TITO data, measured side by side in one run.

Both configurations train one epoch over the same trajectories and the same loss targets
(turns 0..max_turn; asserted: equal trained-token counts). Packing puts a trajectory's
consecutive turns in one row, so the shared prompt is run once instead of once per turn:
*trained* tokens per second is the number that matters (raw tokens/s is shown too).

A third column, ``raw_loop``, trains the packed rows with a minimal hand-written loop (same
model, LoRA, AdamW, loss function, no checkpoints or evaluation): the HF ``Trainer``'s own
overhead is the ratio of its tokens/s to this one's.

Usage: .venv/bin/python bench/bench_train.py [RUN_DIR] [--student smollm2-135m]
       [--trajectories 3] [--max-turn 1] [--repeat 1] [--json]

RUN_DIR defaults to runs/templated/teacher (``python -m assets.demo`` makes it). The student
must have a template that re-renders history turns as the model wrote them (smollm2-135m's
tools template does; the Qwen3 template re-renders the think block, so its re-tokenised rows
never pack and both columns would be the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coop_dag.tito.build import build_tito_parquet  # noqa: E402
from coop_dag.tito.config import TitoConfig  # noqa: E402
from coop_dag.tito.trajectories import trajectories_from_run  # noqa: E402
from coop_dag.training.hf_trainer import lora_config, torch_threads  # noqa: E402
from coop_dag.training.loss import TitoCollator, loss_normaliser, step_loss  # noqa: E402
from coop_dag.training.recipes import get_recipe  # noqa: E402
from coop_dag.training.rows import prepare_rows, read_parquet_rows, write_rows  # noqa: E402
from coop_dag.training.students import get_student  # noqa: E402
from coop_dag.training.train import train_lora  # noqa: E402


def raw_loop(student, train_path: Path, recipe, work: Path) -> dict:
    """One epoch over the prepared rows with a plain PyTorch loop (the overhead baseline)."""
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from coop_dag.tito.dataset import TitoSFTDataset

    rows, _ = read_parquet_rows(train_path)
    prepared, _ = prepare_rows(rows, recipe)
    _, meta = read_parquet_rows(train_path)
    path = write_rows(prepared, work / "raw.parquet", meta)
    tok = student.load_tokenizer()
    ds = TitoSFTDataset(
        str(path),
        tok,
        {
            "max_length": recipe.max_length,
            "truncation": recipe.truncation,
            "pad_mode": "no_padding",
        },
    )
    collate = TitoCollator(tok.pad_token_id)
    with torch_threads(recipe.torch_threads) as threads:
        set_seed(recipe.seed)
        model = get_peft_model(student.load_model(), lora_config(recipe))
        model.train()
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate
        )
        norm = loss_normaliser(ds, 1)
        tokens = trained = 0
        t0 = time.perf_counter()
        for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist():
            batch = collate([ds[i]])
            loss, n = step_loss(model, batch, norm)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            opt.step()
            opt.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            trained += n
        took = time.perf_counter() - t0
    return {
        "rows": len(ds),
        "steps": len(ds),
        "tokens": tokens,
        "trained_tokens": trained,
        "train_time_s": round(took, 2),
        "tokens_per_s": tokens / took,
        "trained_tokens_per_s": trained / took,
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default=str(REPO / "runs" / "templated" / "teacher"))
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--recipe", default="embedded-default")
    ap.add_argument("--trajectories", type=int, default=3)
    ap.add_argument("--max-turn", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats (best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: auto)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    student = get_student(args.student)
    tok = student.load_tokenizer()
    trajs = trajectories_from_run(args.run_dir)[: args.trajectories]
    if not trajs:
        raise SystemExit(f"no trajectories in {args.run_dir}: run `python -m assets.demo` first")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    _, paths = build_tito_parquet(
        trajs,
        tok,
        work / "tito",
        TitoConfig(upweight=1, pack=True, val_fraction=0.0),
        chat_template=student.chat_template,
        student_tokenizer_sha256=student.tokenizer_sha256,
        tokenizer_name=student.name,
        variant="bench",
    )
    base = get_recipe(
        args.recipe,
        max_turn=args.max_turn,
        max_steps=0,
        epochs=1.0,
        batch_size=1,
        grad_accum=1,
        save_steps=10_000,
        upweight_mode="weight",
        torch_threads=args.threads,
    )
    configs = {"packed": base.replace(packing=True), "per_turn": base.replace(packing=False)}
    print(
        f"bench: {student.name}, {len(trajs)} trajectories from {args.run_dir}, turns "
        f"0..{args.max_turn}, recipe {args.recipe} (one epoch, batch 1)"
    )
    best: dict[str, dict] = {}
    for rep in range(args.repeat):
        for name in (*configs, "raw_loop"):
            if name == "raw_loop":
                row = raw_loop(student, paths["train"], configs["packed"], work)
                row["wall_s"] = row["train_time_s"]
            else:
                t0 = time.perf_counter()
                r = train_lora(
                    student,
                    paths["train"],
                    None,
                    configs[name],
                    work / f"{name}-{rep}",
                    force=True,
                )
                wall = time.perf_counter() - t0
                row = {
                    "rows": r.train_rows,
                    "steps": r.steps,
                    "tokens": r.tokens_seen,
                    "trained_tokens": r.trained_tokens,
                    "train_time_s": r.train_time_s,
                    "wall_s": round(wall, 2),
                    "tokens_per_s": r.tokens_seen / r.train_time_s,
                    "trained_tokens_per_s": r.trained_tokens / r.train_time_s,
                    "threads": r.lineage.get("torch_threads"),
                }
            print(
                f"  [{rep}] {name:9s} rows {row['rows']:3d}  tokens {row['tokens']:6d}  trained "
                f"{row['trained_tokens']:5d}  {row['train_time_s']:7.1f}s  "
                f"{row['tokens_per_s']:7.1f} tok/s  {row['trained_tokens_per_s']:6.2f} trained "
                f"tok/s  ({row['threads']} threads)",
                flush=True,
            )
            if name not in best or row["train_time_s"] < best[name]["train_time_s"]:
                best[name] = row
    p, u, raw = best["packed"], best["per_turn"], best["raw_loop"]
    assert p["trained_tokens"] == u["trained_tokens"], "packing changed the loss targets"
    out = {
        "student": student.name,
        "trajectories": len(trajs),
        "max_turn": args.max_turn,
        "packed": p,
        "per_turn": u,
        "tokens_ratio_per_turn_over_packed": u["tokens"] / p["tokens"],
        "trained_tokens_per_s_ratio_packed_over_per_turn": (
            p["trained_tokens_per_s"] / u["trained_tokens_per_s"]
        ),
        "raw_tokens_per_s_ratio_packed_over_per_turn": p["tokens_per_s"] / u["tokens_per_s"],
        "raw_loop": raw,
        "trainer_over_raw_loop_tokens_per_s": p["tokens_per_s"] / raw["tokens_per_s"],
    }
    print(
        f"packed vs per-turn: {out['trained_tokens_per_s_ratio_packed_over_per_turn']:.2f}x "
        f"trained tokens/s ({out['tokens_ratio_per_turn_over_packed']:.2f}x fewer tokens run "
        f"for the same targets; raw tokens/s ratio "
        f"{out['raw_tokens_per_s_ratio_packed_over_per_turn']:.2f})"
    )
    print(
        f"HF Trainer vs a hand-written loop (packed rows): "
        f"{out['trainer_over_raw_loop_tokens_per_s']:.2f}x the loop's tokens/s"
    )
    if args.json:
        print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
