"""coop_dag.training.verl_config, verl_launch and verl_run: config validation, the exact
torchrun / model-merger command lines, and `run_verl` end to end against a stand-in verl
environment (a script playing torchrun and the model merger, writing the broken export of
verl 0.7.1 -- which 0.9.1 still writes for a checkpoint without LoRA metadata -- so the repair
is exercised; real verl 0.9.1 runs in tests/e2e/test_verl_real.py)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from coop_dag.training.adapters import adapter_name
from coop_dag.training.verl_config import (
    CPU_ENV,
    VerlError,
    VerlSFTConfig,
    count_parquet_rows,
    hydra_value,
)
from coop_dag.training.verl_launch import (
    VerlLauncher,
    merge_command,
    run_command,
    train_command,
)
from coop_dag.training.verl_launch import check_launcher as check_verl_launcher
from coop_dag.training.verl_run import latest_checkpoint, run_verl
from coop_dag.util.containers import Command

RECIPE = {
    "lora_rank": 32,
    "lora_alpha": 16,
    "target_modules": "all-linear",
    "lr": 2e-5,
    "epochs": 2,
    "batch_size": 8,
    "micro_batch_size": 2,
    "max_length": 4096,
    "device": "cpu",  # a key for the embedded trainer: ignored here
}


def write_parquet(path: Path, rows: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "input_ids": [[1, 2, 3]] * rows,
            "output_ids": [[4, 5]] * rows,
            "weight": [1.0] * rows,
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture()
def data(tmp_path):
    train = write_parquet(tmp_path / "data" / "train.parquet", 20)
    val = write_parquet(tmp_path / "data" / "val.parquet", 8)
    return tmp_path, train, val


def config(tmp_path, train, val, **kw) -> VerlSFTConfig:
    args = dict(
        train_files=train,
        val_files=val,
        model_path="/models/Qwen3-4B",
        output_dir=tmp_path / "ckpt",
        experiment_name="templated-v1",
    )
    args.update(kw)
    return VerlSFTConfig.from_recipe(RECIPE, **args)


def expected_overrides(tmp_path: Path) -> list[str]:
    return [
        f"data.train_files={tmp_path}/data/train.parquet",
        f"data.val_files={tmp_path}/data/val.parquet",
        "data.custom_cls.path=pkg://coop_dag.tito.dataset",
        "data.custom_cls.name=TitoSFTDataset",
        "data.pad_mode=no_padding",
        "data.max_length=4096",
        "data.train_batch_size=8",
        "data.micro_batch_size_per_gpu=2",
        "model.path=/models/Qwen3-4B",
        "model.lora_rank=32",
        "model.lora_alpha=16",
        "model.target_modules=all-linear",
        "optim.lr=2e-5",
        "trainer.total_epochs=2",
        f"trainer.default_local_dir={tmp_path}/ckpt",
        "trainer.project_name=coop-dag",
        "trainer.experiment_name=templated-v1",
        "trainer.logger=['console']",
        "trainer.resume_mode=disable",
    ]


# --------------------------------------------------------------------------- config


def test_overrides_in_full(data):
    tmp_path, train, val = data
    cfg = config(tmp_path, train, val)
    assert (cfg.train_rows, cfg.val_rows) == (20, 8)  # read from the parquet footers
    assert cfg.overrides() == expected_overrides(tmp_path)


def test_yaml_record_mirrors_the_overrides(data):
    tmp_path, train, val = data
    doc = yaml.safe_load(config(tmp_path, train, val).to_yaml())
    assert doc["data"]["custom_cls"] == {
        "path": "pkg://coop_dag.tito.dataset",
        "name": "TitoSFTDataset",
    }
    assert doc["model"] == {
        "path": "/models/Qwen3-4B",
        "lora_rank": 32,
        "lora_alpha": 16,
        "target_modules": "all-linear",
    }
    assert doc["optim"] == {"lr": 2e-5}
    assert doc["trainer"]["logger"] == ["console"]


def test_batch_size_larger_than_the_data_is_refused(data):
    tmp_path, train, val = data
    small = write_parquet(tmp_path / "data" / "small.parquet", 5)
    with pytest.raises(VerlError) as err:
        config(tmp_path, small, None)
    message = str(err.value)
    assert "train_batch_size=8 exceeds the 5 training rows" in message
    assert "drop_last" in message and "<= 5" in message
    # rows given explicitly (files not readable from here) are checked the same way
    with pytest.raises(VerlError, match="exceeds the 3 training rows"):
        config(tmp_path, "/elsewhere/train.parquet", None, train_rows=3)
    # unknown row count: cannot check, accepted
    assert config(tmp_path, "/elsewhere/train.parquet", None).train_rows is None


def test_validation_rows_smaller_than_a_batch_are_refused(data):
    tmp_path, train, _ = data
    tiny_val = write_parquet(tmp_path / "data" / "tiny_val.parquet", 3)
    with pytest.raises(VerlError, match="exceeds the 3 validation rows"):
        config(tmp_path, train, tiny_val)


@pytest.mark.parametrize(
    ("recipe", "kw", "needle"),
    [
        ({"batch_size": 6}, {"nproc_per_node": 4}, "not divisible by nproc_per_node=4"),
        ({"micro_batch_size": 16}, {}, "micro_batch_size_per_gpu=16 exceeds"),
        ({"lora_rank": 0}, {}, "lora_rank must be a positive integer"),
        ({"lora_alpha": 0}, {}, "lora_alpha must be > 0"),
        ({"lr": float("nan")}, {}, "lr must be > 0"),
        ({"max_token_len_per_gpu": 1024}, {}, "max_token_len_per_gpu=1024 is below"),
        ({"verl": {"data.train_batch_size": 1}}, {}, "may not set data.train_batch_size"),
        ({"rank": 8}, {}, "sets lora_rank twice"),
    ],
)
def test_bad_configs_are_refused(data, recipe, kw, needle):
    tmp_path, train, val = data
    with pytest.raises(VerlError, match=needle):
        VerlSFTConfig.from_recipe(
            {**RECIPE, **recipe},
            train_files=train,
            val_files=val,
            model_path="m",
            output_dir=tmp_path / "o",
            **kw,
        )


def test_extras_lists_and_long_contexts(data):
    tmp_path, train, val = data
    recipe = {
        **RECIPE,
        "target_modules": ["q_proj", "v_proj"],
        "max_length": 16384,
        "lora_alpha": 32.0,
        "save_freq": 25,  # a managed key: the recipe's own, validated
        "verl": {"optim.lr_scheduler_type": "cosine", "trainer.test_freq": 50},
    }
    cfg = VerlSFTConfig.from_recipe(
        recipe,
        train_files=[train, train],
        model_path="Qwen/Qwen3-4B",
        output_dir=tmp_path / "my ckpt",
        experiment_name="1",
    )
    ov = cfg.overrides()
    assert f"data.train_files=['{train}','{train}']" in ov
    assert "data.max_token_len_per_gpu=16384" in ov  # verl's default 8192 would not fit
    assert "model.target_modules=['q_proj','v_proj']" in ov
    assert "model.lora_alpha=32" in ov
    assert "model.path=Qwen/Qwen3-4B" in ov
    assert f"trainer.default_local_dir='{tmp_path}/my ckpt'" in ov  # a space: quoted
    assert "trainer.experiment_name='1'" in ov  # would otherwise be read as an int
    assert "trainer.save_freq=25" in ov
    assert ov[-2:] == ["optim.lr_scheduler_type=cosine", "trainer.test_freq=50"]
    assert not any(o.startswith("data.val_files") for o in ov)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2e-5, "2e-5"),
        (1e-4, "0.0001"),
        (3.0, "3.0"),
        (True, "true"),
        (None, "null"),
        (7, "7"),
        ("pkg://coop_dag.tito.dataset", "pkg://coop_dag.tito.dataset"),
        ("/data/run-2/train.parquet", "/data/run-2/train.parquet"),
        ("~/data", "'~/data'"),
        ("a=b", "'a=b'"),
        ("it's", '"it\'s"'),
        ("null", "'null'"),
        ("1e5", "'1e5'"),
        (["console"], "['console']"),
    ],
)
def test_hydra_values(value, text):
    assert hydra_value(value) == text


def test_interpolation_is_refused():
    with pytest.raises(VerlError, match="interpolate"):
        hydra_value("${oc.env:HOME}")


def test_count_parquet_rows(data):
    _, train, val = data
    assert count_parquet_rows([train, val]) == 28
    with pytest.raises(VerlError, match="cannot read parquet row count"):
        count_parquet_rows([train.parent / "missing.parquet"])


# --------------------------------------------------------------------------- commands


def test_train_command_in_verl_environment(data):
    tmp_path, train, val = data
    cfg = config(tmp_path, train, val, nproc_per_node=2)
    launcher = VerlLauncher(python="/opt/verl-env/bin/python", pythonpath=("/src/coop-dag",))
    cmd = train_command(cfg, launcher)
    assert cmd.argv == (
        "/opt/verl-env/bin/python", "-m", "torch.distributed.run",
        "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "coop_dag.training.verl_pipes",
        *expected_overrides(tmp_path),
    )  # fmt: skip
    assert cmd.env == {"PYTHONPATH": "/src/coop-dag"}
    assert cmd.container_name is None
    assert cmd.shell().startswith("PYTHONPATH=/src/coop-dag /opt/verl-env/bin/python -m torch")
    # with an export: rank 0 exports the last checkpoint once verl's trainer is done
    exported = train_command(cfg, launcher, export_to=tmp_path / "merged")
    export_args = ("-m", "coop_dag.training.verl_pipes", "--export-to", f"{tmp_path}/merged")
    assert exported.argv[6:10] == export_args
    assert exported.argv[10:] == cmd.argv[8:]


def test_train_command_in_container(data):
    tmp_path, train, val = data
    cfg = config(tmp_path, train, val)
    launcher = VerlLauncher(
        image="coop-dag-gpu:latest",
        mounts=(("/hf-cache", "/root/.cache/huggingface", "rw"),),
    )
    cmd = train_command(cfg, launcher, name="coop-dag-verl-test")
    d = str(tmp_path / "data")
    assert cmd.argv == (
        "docker", "run", "--rm", "--ipc=host", "--gpus", "all",
        "--name", "coop-dag-verl-test",
        "-e", "HF_HUB_OFFLINE", "-e", "HF_TOKEN", "-e", "HF_HOME", "-e", "WANDB_API_KEY",
        # Dagster Pipes' variables, by name: docker copies them from a Pipes launch's env
        "-e", "DAGSTER_PIPES_CONTEXT", "-e", "DAGSTER_PIPES_MESSAGES",
        "-v", f"{d}:{d}:ro",
        "-v", "/models/Qwen3-4B:/models/Qwen3-4B:ro",
        "-v", f"{tmp_path}/ckpt:{tmp_path}/ckpt:rw",
        "-v", "/hf-cache:/root/.cache/huggingface:rw",
        "coop-dag-gpu:latest",
        "torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=1",
        "-m", "coop_dag.training.verl_pipes",
        *expected_overrides(tmp_path),
    )  # fmt: skip
    assert cmd.env == {} and cmd.container_name == "coop-dag-verl-test"
    # the export's target is mounted too (the Pipes channel is in the mounted output dir)
    exported = train_command(cfg, launcher, name="n", export_to=tmp_path / "merged")
    assert f"{tmp_path}/merged:{tmp_path}/merged:rw" in exported.argv
    i = exported.argv.index("coop_dag.training.verl_pipes")
    assert exported.argv[i + 1 : i + 3] == ("--export-to", f"{tmp_path}/merged")


def test_container_pythonpath_is_mounted_and_exported(data):
    tmp_path, train, val = data
    cfg = config(tmp_path, train, val)
    launcher = VerlLauncher(image="verlai/verl:x", pythonpath=("/src/coop-dag",), pass_env=())
    argv = train_command(cfg, launcher, name="n").argv
    i = argv.index("-e")
    assert argv[i : i + 2] == ("-e", "PYTHONPATH=/src/coop-dag")
    assert "/src/coop-dag:/src/coop-dag:ro" in argv


def test_merge_commands(tmp_path):
    ckpt, target = tmp_path / "ckpt" / "global_step_4", tmp_path / "merged"
    cmd = merge_command(ckpt, target, VerlLauncher(python="/opt/verl-env/bin/python"))
    assert cmd.argv == (
        "/opt/verl-env/bin/python", "-m", "coop_dag.training.verl_pipes",
        "--export-only", str(ckpt),
        "--export-to", str(target),
        "--backend", "fsdp",
    )  # fmt: skip
    in_image = merge_command(
        ckpt,
        target,
        VerlLauncher(image="coop-dag-gpu:latest", pass_env=()),
        trust_remote_code=True,
        name="m1",
    )
    out = ckpt.parent  # the run's output dir: its metrics and the Pipes channel
    assert in_image.argv == (
        "docker", "run", "--rm", "--ipc=host", "--name", "m1",
        "-v", f"{out}:{out}:rw", "-v", f"{target}:{target}:rw",
        "coop-dag-gpu:latest",
        "python", "-m", "coop_dag.training.verl_pipes",
        "--export-only", str(ckpt), "--export-to", str(target), "--backend", "fsdp",
        "--trust-remote-code",
    )  # fmt: skip
    with pytest.raises(VerlError, match="backend"):
        merge_command(ckpt, target, VerlLauncher(python="p"), backend="ddp")


CPU_FLAGS = [
    "engine.strategy=fsdp2",
    "engine.use_torch_compile=false",
    "+model.override_config.attn_implementation=sdpa",
    "trainer.device=cpu",
    "data.num_workers=0",
]


def test_cpu_command_adds_the_cpu_flags_and_environment_only(data):
    tmp_path, train, val = data
    launcher = VerlLauncher(python="/v/bin/python", pythonpath=("/src/coop-dag",))
    cpu = train_command(config(tmp_path, train, val, device="cpu"), launcher)
    assert cpu.argv[8:] == (*expected_overrides(tmp_path), *CPU_FLAGS)
    assert cpu.env == {
        "PYTHONPATH": "/src/coop-dag",
        "VERL_USE_EXTERNAL_MODULES": "coop_dag.training.verl_cpu_platform",
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",
    } == {"PYTHONPATH": "/src/coop-dag", **CPU_ENV}
    gpu = train_command(config(tmp_path, train, val), launcher)
    assert not set(CPU_FLAGS) & set(gpu.argv) and gpu.env == {"PYTHONPATH": "/src/coop-dag"}
    # the "+" key still lands in the nested record; a CPU container gets no GPUs
    doc = yaml.safe_load(config(tmp_path, train, val, device="cpu").to_yaml())
    assert doc["model"]["override_config"] == {"attn_implementation": "sdpa"}
    assert doc["engine"] == {"strategy": "fsdp2", "use_torch_compile": False}
    image = VerlLauncher(image="verl:x", pass_env=())
    argv = train_command(config(tmp_path, train, val, device="cpu"), image, name="n").argv
    assert "--gpus" not in argv and "VERL_PLATFORM=cpu" in argv
    merge = merge_command(tmp_path / "g", tmp_path / "m", launcher, device="cpu")
    assert merge.env == {"PYTHONPATH": "/src/coop-dag", **CPU_ENV}
    with pytest.raises(VerlError, match="device must be one of cuda, cpu"):
        config(tmp_path, train, val, device="tpu")
    with pytest.raises(VerlError, match="may not set engine.strategy"):
        VerlSFTConfig.from_recipe(
            {**RECIPE, "verl": {"engine.strategy": "fsdp"}}, train_files=train,
            model_path="/m", output_dir=tmp_path / "o", device="cpu",
        )  # fmt: skip


def test_a_missing_verl_environment_names_it_and_the_fix(tmp_path):
    missing = tmp_path / ".venv-verl" / "bin" / "python"
    with pytest.raises(VerlError) as err:
        check_verl_launcher(VerlLauncher(python=str(missing)))
    assert str(missing) in str(err.value) and "bash scripts/verl_venv.sh" in str(err.value)
    check_verl_launcher(VerlLauncher(python=sys.executable))
    check_verl_launcher(VerlLauncher(image="verl:x"))  # docker finds its image itself


def test_verl_cpu_trainer_resolves_to_the_local_venv(tmp_path):
    from coop_dag import REPO_ROOT
    from coop_dag.config.profiles import TrainerChoice, resolve_profile

    p = resolve_profile({"COOP_DAG_TRAINER": "verl-cpu", "COOP_DAG_VERL_NPROC": "4"})
    python = str(REPO_ROOT / ".venv-verl" / "bin" / "python")
    assert p.trainer == TrainerChoice("verl-cpu", python, None, 1)
    assert p.trainer.device == "cpu" and p.trainer.launch == "python"
    env = {"COOP_DAG_TRAINER": "verl-cpu", "COOP_DAG_VERL_VENV": str(tmp_path / "v")}
    assert resolve_profile(env).trainer.verl_python == str(tmp_path / "v" / "bin" / "python")
    env["COOP_DAG_VERL_PYTHON"] = "/x/python"
    assert resolve_profile(env).trainer.verl_python == "/x/python"
    assert resolve_profile({"COOP_DAG_TRAINER": "verl"}).trainer.device == "cuda"
    assert resolve_profile({}).trainer.kind == "embedded"  # the default stays embedded

    from coop_dag.config.profiles import local_verl_python
    from resources.training import TrainingResource

    res = TrainingResource(kind="verl-cpu")  # reads the process environment
    assert res.trainer_choice() == TrainerChoice("verl-cpu", local_verl_python(), None, 1)
    assert res.verl_launcher().python == local_verl_python()
    assert TrainingResource(kind="verl-cpu", verl_python="/y").trainer_choice().verl_python == "/y"


def test_launcher_needs_exactly_one_place():
    with pytest.raises(VerlError, match="exactly one"):
        VerlLauncher()
    with pytest.raises(VerlError, match="exactly one"):
        VerlLauncher(python="p", image="i")


def test_latest_checkpoint(tmp_path):
    with pytest.raises(VerlError, match="no verl checkpoint"):
        latest_checkpoint(tmp_path)
    for step in (2, 10, 4):
        (tmp_path / f"global_step_{step}").mkdir()
    assert latest_checkpoint(tmp_path).name == "global_step_10"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    assert latest_checkpoint(tmp_path).name == "global_step_4"


# --------------------------------------------------------------------------- running


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_run_command_streams_and_reports_the_tail(tmp_path):
    prog = script(
        tmp_path / "p",
        """
        import sys
        for i in range(100):
            print(f"line {i}", flush=True)
        print("boom: CUDA out of memory", file=sys.stderr, flush=True)
        sys.exit(3)
        """,
    )
    seen: list[str] = []
    with pytest.raises(VerlError) as err:
        run_command(Command((str(prog),)), what="verl sft_trainer", on_log=seen.append, tail=5)
    assert len(seen) == 101 and seen[0] == "line 0"
    message = str(err.value)
    assert message.startswith("verl sft_trainer failed (exit code 3)")
    assert "--- last 5 lines ---\nline 96\nline 97\nline 98\nline 99\nboom: CUDA out of memory" in (
        message
    )
    assert "line 95" not in message


def test_run_command_env_and_timeout(tmp_path):
    prog = script(
        tmp_path / "p",
        """
        import os, time
        print(os.environ["COOP_DAG_X"], flush=True)
        time.sleep(60)
        """,
    )
    seen: list[str] = []
    with pytest.raises(VerlError, match=r"timed out after 1s"):
        run_command(
            Command((str(prog),), {"COOP_DAG_X": "hello"}),
            what="t",
            on_log=seen.append,
            timeout=1,
        )
    assert seen == ["hello"]
    with pytest.raises(VerlError, match="cannot start"):
        run_command(Command((str(tmp_path / "missing"),)), what="t")


FAKE_VERL = """
import json, os, sys
args = sys.argv[1:]
log = open(os.environ["FAKE_VERL_LOG"], "a")
log.write(json.dumps(args) + "\\n")
log.close()
if args[:2] == ["-m", "torch.distributed.run"]:
    assert os.environ.get("PYTHONPATH") == "/src/coop-dag", os.environ.get("PYTHONPATH")
    over = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("--"))
    assert over["data.custom_cls.path"] == "pkg://coop_dag.tito.dataset"
    if os.environ.get("FAKE_VERL_FAIL"):
        print("Traceback: ValueError: bad row", flush=True)
        sys.exit(1)
    out = over["trainer.default_local_dir"]
    for step in (1, 2):
        print(f"step:{step} - train/loss:{1.0 / step:.3f}", flush=True)
        os.makedirs(os.path.join(out, f"global_step_{step}", "huggingface"), exist_ok=True)
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("2")
    # coop_dag.training.verl_pipes --export-to: rank 0 exports the last checkpoint
    import torch
    from safetensors.torch import save_file
    target = args[args.index("--export-to") + 1]
    lora = os.path.join(target, "lora_adapter")
    os.makedirs(lora, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 16, generator=g),
            "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(16, 8, generator=g),
        },
        os.path.join(lora, "adapter_model.safetensors"),
    )
    # what verl 0.7.1 + peft >= 0.13 wrote
    cfg = {"r": 8, "lora_alpha": 0, "target_modules": ["q_proj"],
           "task_type": "TaskType.CAUSAL_LM", "peft_type": "LORA",
           "base_model_name_or_path": None}
    json.dump(cfg, open(os.path.join(lora, "adapter_config.json"), "w"))
    print("Saving lora adapter to " + lora, flush=True)
else:
    sys.exit("unexpected " + repr(args))
"""


@pytest.fixture()
def fake_verl(tmp_path, monkeypatch):
    python = script(tmp_path / "verl-python", FAKE_VERL)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_VERL_LOG", str(log))
    return VerlLauncher(python=str(python), pythonpath=("/src/coop-dag",)), log


def test_run_verl_trains_merges_repairs_and_validates(data, fake_verl):
    tmp_path, train, val = data
    launcher, log = fake_verl
    recipe = {**RECIPE, "lora_rank": 8, "lora_alpha": 16}
    cfg = VerlSFTConfig.from_recipe(
        recipe,
        train_files=train,
        val_files=val,
        model_path="/models/Qwen3-4B",
        output_dir=tmp_path / "ckpt",
    )
    lines: list[str] = []
    result = run_verl(cfg, launcher, on_log=lines.append)
    assert result.checkpoint_dir == tmp_path / "ckpt" / "global_step_2"
    assert result.merged_dir == tmp_path / "ckpt" / "merged"
    assert result.adapter_dir == tmp_path / "ckpt" / "merged" / "lora_adapter"
    assert result.repairs == (
        "task_type: 'TaskType.CAUSAL_LM' -> 'CAUSAL_LM'",
        "lora_alpha: 0 -> 16",
        "base_model_name_or_path: None -> '/models/Qwen3-4B'",
    )
    assert result.adapter.name == adapter_name(result.adapter_dir)
    assert result.adapter.lora_alpha == 16 and result.adapter.base_model == "/models/Qwen3-4B"
    assert "step:2 - train/loss:0.500" in lines
    assert any(line.startswith("[coop-dag] repaired verl export: lora_alpha") for line in lines)
    (call,) = [json.loads(x) for x in log.read_text().splitlines()]  # train, then export
    assert call[:2] == ["-m", "torch.distributed.run"]
    merged = str(tmp_path / "ckpt" / "merged")
    assert call[6:9] == ["coop_dag.training.verl_pipes", "--export-to", merged]
    cfg_json = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert cfg_json["task_type"] == "CAUSAL_LM"


def test_run_verl_failure_carries_the_last_lines(data, fake_verl, monkeypatch):
    tmp_path, train, val = data
    launcher, _ = fake_verl
    monkeypatch.setenv("FAKE_VERL_FAIL", "1")
    cfg = config(tmp_path, train, val)
    with pytest.raises(VerlError) as err:
        run_verl(cfg, launcher)
    assert "verl sft_trainer failed (exit code 1)" in str(err.value)
    assert "Traceback: ValueError: bad row" in str(err.value)
    assert not os.path.exists(tmp_path / "ckpt" / "merged" / "lora_adapter")


# --------------------------------------------------------------------------- verl_pipes


def test_metrics_record_keeps_the_curve_whole_across_a_resume(tmp_path):
    """Rank 0's record (`coop_dag.training.verl_pipes.Reporter`): a resumed attempt's steps replace
    the killed attempt's after the checkpoint it resumed from; a line cut short is skipped."""
    from coop_dag.training.verl_pipes import (
        METRICS_FILE,
        STEP_TIME_KEY,
        Reporter,
        loss_curve,
        read_metrics,
    )

    first = Reporter(tmp_path)
    first.started(6, 0)
    for step in (1, 2, 3, 4):  # killed after step 4; its last checkpoint was step 2
        first.step(step, {"train/loss": 10.0 - step, "train/lr": 0.1, STEP_TIME_KEY: 0.5})
    with (tmp_path / METRICS_FILE).open("a") as fh:
        fh.write('{"event": "step", "step": 5, "metr')  # the kill cut this line short
    second = Reporter(tmp_path)
    second.started(6, 2)
    for step in (3, 4, 5, 6):
        second.step(step, {"train/loss": 1.0 / step, "train/lr": 0.1, "note": "x"})
    second.step(6, {"val/loss": 0.25})
    steps, resumed = read_metrics(tmp_path)
    assert resumed == 2 and sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert steps[2] == {"train/loss": 8.0, "train/lr": 0.1, STEP_TIME_KEY: 0.5}
    assert steps[3] == {"train/loss": 1.0 / 3, "train/lr": 0.1}  # the resumed attempt's
    curve = loss_curve(steps)
    assert [p["step"] for p in curve["train"]] == [1, 2, 3, 4, 5, 6]
    assert curve["val"] == [{"step": 6, "val_loss": 0.25}]
    assert read_metrics(tmp_path / "nothing") == ({}, 0)


class _FakePipes:
    def __init__(self):
        import logging

        self.logged, self.reported, self.is_closed = [], [], False
        self.log = logging.getLogger("fake-pipes")
        self.log.info = self.logged.append

    def report_asset_materialization(self, metadata):
        self.reported.append(metadata)


def test_reporter_logs_each_step_and_reports_the_export(tmp_path):
    from coop_dag.training.verl_pipes import STEP_TIME_KEY, Reporter

    pipes = _FakePipes()
    reporter = Reporter(tmp_path / "ckpt", pipes)
    reporter.started(2, 0)
    reporter.step(1, {"train/loss": 2.5, "train/lr": 2e-5, STEP_TIME_KEY: 1.25})
    reporter.step(2, {"train/loss": 2.0, "train/lr": 2e-5, STEP_TIME_KEY: 0.75})
    reporter.step(2, {"val/loss": 1.5})
    meta = reporter.exported(tmp_path / "ckpt" / "global_step_2", tmp_path / "m" / "lora_adapter")
    assert pipes.logged[:4] == [
        "verl sft_trainer: 2 steps, from step 0",
        "verl step 1/2: loss 2.5000, lr 2e-05, 1.25 s",
        "verl step 2/2: loss 2.0000, lr 2e-05, 0.75 s",
        "verl step 2/2: val_loss 1.5000",
    ]
    assert pipes.reported == [meta]
    assert meta["verl_adapter_path"] == {
        "raw_value": str(tmp_path / "m" / "lora_adapter"), "type": "path",
    }  # fmt: skip
    curve = meta["verl_loss_curve"]["raw_value"]
    assert [p["loss"] for p in curve["train"]] == [2.5, 2.0]
    assert (meta["verl_steps"], meta["verl_final_loss"]) == (2, 2.0)
    assert meta["verl_final_val_loss"] == 1.5
    assert meta["verl_mean_step_time_s"] == 1.0 and meta["verl_resumed_from_step"] == 0


def test_verl_pipes_entry_arguments():
    from coop_dag.training.verl_pipes import _parse

    args, overrides = _parse(["--export-to", "/m", "a.b=1", "+c.d=x", "trainer.logger=['console']"])
    assert args.export_to == "/m" and not args.export_only
    assert overrides == ["a.b=1", "+c.d=x", "trainer.logger=['console']"]
    args, overrides = _parse(["--export-only", "/c/global_step_2", "--export-to", "/m"])
    assert (args.export_only, overrides, args.backend) == ("/c/global_step_2", [], "fsdp")
    for bad in (["--export-only", "/c"], ["--export-only", "/c", "--export-to", "/m", "a=1"]):
        with pytest.raises(SystemExit):
            _parse(bad)
