"""Shared by tests/test_serve.py and tests/test_serving.py: one in-process embedded server
for `tiny-qwen3` per test session, and tiny PEFT adapters with perturbed lora_B weights (so
they change outputs). Cached at module level: each is built once however many test modules
ask for it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import warnings
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

STUDENT = "tiny-qwen3"
TEST_VARIANT = "serve-test"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_lock = threading.Lock()


@lru_cache(maxsize=1)
def student():
    from coop_dag.students import get_student

    return get_student(STUDENT)


@lru_cache(maxsize=1)
def tokenizer():
    return student().load_tokenizer()


@lru_cache(maxsize=1)
def server():
    """The shared in-process server (stopped at exit). One torch thread: on a shared 2-core
    box oversubscribed OpenMP threads make decoding many times slower."""
    import torch

    from coop_dag.serve import EmbeddedServer

    torch.set_num_threads(1)

    srv = EmbeddedServer(STUDENT).start()
    atexit.register(srv.stop)
    return srv


@lru_cache(maxsize=1)
def adapters() -> dict[str, str]:
    """Tiny adapters under a temp dir:

    - ``A``, ``B``: trained-ish (lora_B perturbed with different seeds), lineage.json with
      variant ``serve-test`` and the student's tokenizer sha;
    - ``A_copy``: A's files in another dir (same weights, same content name);
    - ``zero``: a fresh, untrained adapter (all-zero lora_B);
    - ``no_config``: A without adapter_config.json;
    - ``other_base``: A's weights claiming another base model.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from coop_dag.adapters import write_lineage

    root = Path(tempfile.mkdtemp(prefix="coop-serve-adapters-"))
    atexit.register(shutil.rmtree, root, True)
    s = student()
    model = s.load_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
        )
    out: dict[str, str] = {}
    pm.save_pretrained(str(root / "zero"))
    out["zero"] = str(root / "zero")
    for label, seed in (("A", 1), ("B", 2)):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        d = root / label
        pm.save_pretrained(str(d))
        write_lineage(
            d,
            {
                "variant": TEST_VARIANT,
                "student": s.name,
                "tokenizer_sha256": s.tokenizer_sha256,
                "base_model": str(s.model_dir),
            },
        )
        out[label] = str(d)
    shutil.copytree(root / "A", root / "A_copy")
    out["A_copy"] = str(root / "A_copy")
    shutil.copytree(root / "A", root / "no_config")
    (root / "no_config" / "adapter_config.json").unlink()
    out["no_config"] = str(root / "no_config")
    shutil.copytree(root / "A", root / "other_base")
    (root / "other_base" / "lineage.json").unlink()
    cfg_path = root / "other_base" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen3-8B"
    cfg_path.write_text(json.dumps(cfg))
    out["other_base"] = str(root / "other_base")
    return out


def unload_all(srv) -> None:
    """Leave the shared server with no adapters (between tests)."""
    for a in srv.engine.adapters():
        try:
            srv.engine.unload_adapter(a.name)
        except Exception:
            pass


def ignore_adapters(monkeypatch, engine) -> None:
    """Simulate a server whose adapter swap is a no-op: every row generates with the base."""
    real = engine._run_generate

    def base_only(jobs):
        for job in jobs:
            job.adapter = None
        return real(jobs)

    monkeypatch.setattr(engine, "_run_generate", base_only)
