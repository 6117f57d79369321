"""verl's engine SFT trainer as the cluster training engine: config, commands, launch.

verl runs in its own environment (a separate Python, or a container image): installing it
next to Dagster downgrades antlr4 and breaks Dagster's selection parser. This module never
imports verl; it builds the command lines and runs them as subprocesses.

Training: ``torchrun --standalone --nnodes=1 --nproc_per_node=N -m verl.trainer.sft_trainer
<hydra overrides>`` — the engine SFT trainer (Hydra config ``sft_trainer_engine``), which
reads our TITO parquet through ``data.custom_cls`` = ``pkg://coop_dag.tito.dataset`` /
``TitoSFTDataset`` (so the project must be importable in verl's environment). Export:
``python -m verl.model_merger merge --backend fsdp --local_dir <global_step_N>
--target_dir <dir>``, which writes the PEFT adapter to ``<dir>/lora_adapter``. In 0.9.1 its
``r``, ``lora_alpha`` and ``task_type`` come from the checkpoint's ``lora_train_meta.json``
and are right; ``base_model_name_or_path`` is ``null`` -- the one field `run_verl` repairs
(to ``model.path``). It then validates the export and checks its rank and alpha are the
config's (`coop_dag.training.adapters`). Without that metadata (a checkpoint from verl < 0.9) the
merger falls back to ``lora_alpha: 0`` and no ``task_type``; `repair_adapter` still fixes
those, from the config, so such an export is repaired rather than served as a no-op.

On a machine without GPUs, ``device="cpu"`` runs the same trainer, dataset and export on the
CPU (`CPU_OVERRIDES`, `CPU_ENV`, the platform in `training.verl_cpu_platform`): the venv from
``scripts/verl_venv.sh``, trainer ``verl-cpu`` in `coop_dag.config.profiles`.

`train_lora_verl` is the ``lora_checkpoint`` asset's verl trainer: the same contract and result
as the embedded `training.train.train_lora` (rows prepared for the training recipe, the recipe
mapped onto verl's config by `config_for_recipe`, the same ``lineage.json`` facts), with a
finished verl checkpoint never trained again (`finished_checkpoint`).

Checked against verl 0.9.1 as installed from PyPI (and run: tests/e2e/test_verl_real.py), on every
key used here: ``verl/trainer/config/sft_trainer_engine.yaml`` (data.* incl. truncation,
trainer.* incl. total_training_steps), ``config/model/hf_model.yaml`` (model.path, lora_rank,
lora_alpha, target_modules), ``config/optim/fsdp.yaml`` (optim.lr, lr_scheduler_type,
lr_warmup_steps, weight_decay, clip_grad), ``verl/trainer/sft_trainer.py`` (hydra main,
``create_sft_dataset`` -> ``load_extern_object(custom_cls.path, custom_cls.name)``, the
``DistributedSampler``/``StatefulDataLoader`` with ``drop_last=True`` for train *and* val,
``total_training_steps = len(dataloader) * total_epochs`` unless set, a loop over
``total_epochs`` that saves only on the last step or every ``save_freq``, the console logger's
``step:N - key:value`` lines), ``config/engine/fsdp.yaml`` (strategy, use_torch_compile),
``verl/utils/checkpoint/checkpoint_handler.py``
(``default_local_dir/global_step_N``, then ``latest_checkpointed_iteration.txt`` renamed into
place once that checkpoint is saved), ``verl/model_merger/base_model_merger.py`` (CLI flags;
``save_lora_adapter`` reads ``lora_train_meta.json``, writes ``<target_dir>/lora_adapter`` with
no base model). The override
value syntax follows Hydra's override grammar (facebookresearch/hydra
``hydra/grammar/OverrideLexer.g4``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coop_dag.util.containers import (
    DEFAULT_PASS_ENV,
    Command,
    container_run_argv,
    remove_container,
)
from coop_dag.util.files import atomic_write_json, file_sha256
from coop_dag.util.processes import start_streaming, stop_group

__all__ = [
    "DATASET_CLASS",
    "DATASET_MODULE",
    "TRAINER_MODULE",
    "MERGER_MODULE",
    "Command",
    "LaunchSession",
    "VerlError",
    "VerlLauncher",
    "VerlResult",
    "VerlSFTConfig",
    "config_for_recipe",
    "container_run_argv",
    "check_launcher",
    "count_parquet_rows",
    "device_environment",
    "finished_checkpoint",
    "hydra_value",
    "latest_checkpoint",
    "merge_command",
    "metrics_from_file",
    "run_command",
    "run_record",
    "run_verl",
    "train_command",
    "train_lora_verl",
]

TRAINER_MODULE = "coop_dag.training.verl_pipes"  # verl.trainer.sft_trainer's main + Pipes reporting
VERL_TRAINER_MODULE = "verl.trainer.sft_trainer"  # what TRAINER_MODULE runs, in process
MERGER_MODULE = "verl.model_merger"  # what TRAINER_MODULE exports with, in process
DATASET_MODULE = "pkg://coop_dag.tito.dataset"
DATASET_CLASS = "TitoSFTDataset"
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint tracker name
RUN_RECORD = "coop_dag_verl_run.json"  # in output_dir: what the checkpoints there were trained on
DONE_FILE = "coop_dag_verl_done.json"  # in output_dir: verl exited 0; names its final checkpoint
ADAPTER_SUBDIR = "lora_adapter"  # where verl's merger puts the PEFT adapter
VERL_DEFAULT_MAX_TOKEN_LEN_PER_GPU = 8192  # sft_trainer_engine.yaml: data.max_token_len_per_gpu

DEVICES = ("cuda", "cpu")  # VerlSFTConfig.device
CPU_PLATFORM_MODULE = "coop_dag.training.verl_cpu_platform"
# How verl 0.9.1 trains on a CPU (the same trainer, engine and export as on GPUs):
CPU_ENV: dict[str, str] = {
    # our platform (gloo, device "cpu"); verl imports the module while importing itself
    "VERL_USE_EXTERNAL_MODULES": CPU_PLATFORM_MODULE,
    "VERL_PLATFORM": "cpu",
    # the FSDP engine is registered for cuda/npu only: this picks it; it then runs on the
    # platform's device, the CPU
    "VERL_ENGINE_DEVICE": "cuda",
}
CPU_OVERRIDES: tuple[tuple[str, Any], ...] = (
    ("engine.strategy", "fsdp2"),  # FSDP1 refuses CPU parameters with sync_module_states
    ("engine.use_torch_compile", False),  # no compiler toolchain needed, no compile time
    # the model config's override_config is an empty dict: a new key needs Hydra's "+"
    ("+model.override_config.attn_implementation", "sdpa"),  # no flash-attn on CPU
    ("trainer.device", "cpu"),
    ("data.num_workers", 0),  # 8 loader processes by default: 2 cores shared with training
)

# Dagster Pipes' bootstrap variables, handed to verl's container by name only (`-e NAME`,
# beside `DEFAULT_PASS_ENV`): a launch through `run_verl`'s `session` sets them
# (their values never reach a command line or verl_command.txt); unset, docker sets nothing.
PIPES_ENV = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")  # verl_pipes.PIPES_ENV
PIPES_DIR = "pipes"  # in output_dir: where a session's message file goes (mounted rw)

LogFn = Callable[[str], None]
# One verl launch's session (Dagster Pipes, opened by the asset): called with a directory the
# launch can write to (inside output_dir: mounted into a container at the same path), it
# yields the environment variables the launch gets on top of the command's.
LaunchSession = Callable[[Path], AbstractContextManager[Mapping[str, str]]]


class VerlError(RuntimeError):
    """A bad training config, or a verl process that failed (with its last output lines)."""


# --------------------------------------------------------------------------- commands


# --------------------------------------------------------------------------- hydra values

_SAFE_UNQUOTED = re.compile(r"^[A-Za-z0-9_/+.%*:-]+$")
_TYPED_LOOKING = re.compile(
    r"^(?:[+-]?\d[\d_]*|[+-]?(?:\d*\.\d+|\d+\.)(?:[eE][+-]?\d+)?|[+-]?\d+[eE][+-]?\d+"
    r"|true|false|null|[+-]?inf|nan)$",
    re.IGNORECASE,
)


def _fmt_float(value: float) -> str:
    if not math.isfinite(value):
        raise VerlError(f"refusing a non-finite number in a verl override: {value!r}")
    text = repr(float(value))
    if "e" in text:  # Hydra's lexer rejects a zero-padded exponent ("2e-05")
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _quote(text: str) -> str:
    if "${" in text:
        raise VerlError(f"refusing {text!r} in a verl override: Hydra would interpolate '${{'")
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "'" + text.replace("'", "\\'") + "'"


def hydra_value(value: Any, *, quote_strings: bool = False) -> str:
    """Render a Python value as a Hydra override value: numbers and booleans typed, lists
    as ``['a','b']``, strings bare when the grammar allows it (paths, ``pkg://...``) and
    quoted when they hold other characters or would be read as a number/bool/null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if quote_strings or not _SAFE_UNQUOTED.match(value) or _TYPED_LOOKING.match(value):
            return _quote(value)
        return value
    if isinstance(value, Sequence):
        return "[" + ",".join(hydra_value(v, quote_strings=True) for v in value) + "]"
    raise VerlError(f"cannot render {type(value).__name__} {value!r} as a Hydra override")


# --------------------------------------------------------------------------- config


def count_parquet_rows(files: Iterable[str | os.PathLike]) -> int:
    """Rows across parquet files, from their footers (no data is read)."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        try:
            total += pq.ParquetFile(os.fspath(f)).metadata.num_rows
        except (OSError, ValueError) as exc:
            raise VerlError(f"cannot read parquet row count of {f}: {exc}") from exc
    return total


# Recipe keys -> accepted spellings (the first is canonical).
RECIPE_KEYS: dict[str, tuple[str, ...]] = {
    "lora_rank": ("lora_rank", "rank", "r", "lora_r"),
    "lora_alpha": ("lora_alpha", "alpha"),
    "target_modules": ("target_modules",),
    "lr": ("lr", "learning_rate"),
    "total_epochs": ("total_epochs", "epochs"),
    "train_batch_size": ("train_batch_size", "batch_size"),
    "micro_batch_size_per_gpu": ("micro_batch_size_per_gpu", "micro_batch_size"),
    "max_length": ("max_length", "max_seq_len"),
    "max_token_len_per_gpu": ("max_token_len_per_gpu",),
    "use_dynamic_bsz": ("use_dynamic_bsz",),
    "total_training_steps": ("total_training_steps", "max_steps"),  # 0: not set
    "truncation": ("truncation",),
    "save_freq": ("save_freq",),  # trainer.save_freq: a checkpoint every N steps (resume)
    "resume_mode": ("resume_mode",),
}

# Override keys this module owns; a recipe's free-form `verl:` section may not set them
# (they carry the invariants `validate` checks).
MANAGED_KEYS = frozenset(
    {
        "data.train_files",
        "data.val_files",
        "data.custom_cls.path",
        "data.custom_cls.name",
        "data.pad_mode",
        "data.max_length",
        "data.train_batch_size",
        "data.micro_batch_size_per_gpu",
        "data.max_token_len_per_gpu",
        "data.use_dynamic_bsz",
        "data.truncation",
        "model.path",
        "model.lora_rank",
        "model.lora_alpha",
        "model.target_modules",
        "optim.lr",
        "trainer.total_epochs",
        "trainer.total_training_steps",
        "trainer.default_local_dir",
        "trainer.project_name",
        "trainer.experiment_name",
        "trainer.logger",
        "trainer.resume_mode",
        "trainer.save_freq",
        *(key for key, _ in CPU_OVERRIDES),
    }
)


def _recipe_get(recipe: Mapping[str, Any], key: str) -> Any:
    found = [(k, recipe[k]) for k in RECIPE_KEYS[key] if k in recipe]
    if len(found) > 1:
        names = ", ".join(k for k, _ in found)
        raise VerlError(f"training recipe sets {key} twice ({names}); keep one")
    return found[0][1] if found else None


def _as_tuple(files: str | os.PathLike | Iterable[str | os.PathLike] | None) -> tuple[str, ...]:
    if files is None:
        return ()
    if isinstance(files, str | os.PathLike):
        return (os.fspath(files),)
    return tuple(os.fspath(f) for f in files)


@dataclass(frozen=True)
class VerlSFTConfig:
    """Everything `sft_trainer` needs for one LoRA run over TITO parquet."""

    train_files: tuple[str, ...]
    model_path: str
    output_dir: str  # trainer.default_local_dir: global_step_N/ land here
    val_files: tuple[str, ...] = ()
    train_rows: int | None = None  # None: unknown (counted by from_recipe when readable)
    val_rows: int | None = None
    max_length: int = 4096
    train_batch_size: int = 16
    micro_batch_size_per_gpu: int = 1
    lora_rank: int = 32
    lora_alpha: float = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    lr: float = 2e-5
    total_epochs: int = 2
    project_name: str = "coop-dag"
    experiment_name: str = "sft"
    nproc_per_node: int = 1
    logger: tuple[str, ...] = ("console",)
    resume_mode: str = "disable"  # "auto": resume from output_dir's newest checkpoint
    save_freq: int | None = None  # trainer.save_freq (None: verl's -1, the last step only)
    max_token_len_per_gpu: int | None = None
    use_dynamic_bsz: bool | None = None
    # trainer.total_training_steps (None: verl's len(dataloader) * total_epochs); verl's loop
    # still stops after total_epochs, so `validate` checks the epochs reach it
    total_training_steps: int | None = None
    truncation: str | None = None  # data.truncation (TitoSFTDataset honours it); None: verl's
    dataset_module: str = DATASET_MODULE
    dataset_class: str = DATASET_CLASS
    extra: Mapping[str, Any] = field(default_factory=dict)  # more dotted overrides
    device: str = "cuda"  # "cpu": verl on the CPU (CPU_OVERRIDES, CPU_ENV)

    @classmethod
    def from_recipe(
        cls,
        recipe: Mapping[str, Any],
        *,
        train_files: str | os.PathLike | Iterable[str | os.PathLike],
        model_path: str | os.PathLike,
        output_dir: str | os.PathLike,
        val_files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
        train_rows: int | None = None,
        val_rows: int | None = None,
        project_name: str = "coop-dag",
        experiment_name: str = "sft",
        nproc_per_node: int = 1,
        count_rows: bool = True,
        device: str = "cuda",
    ) -> VerlSFTConfig:
        """Build from a training recipe (``lora_rank``/``rank``, ``lora_alpha``/``alpha``,
        ``target_modules``, ``lr``, ``total_epochs``/``epochs``, ``train_batch_size``/
        ``batch_size``, ``micro_batch_size_per_gpu``/``micro_batch_size``, ``max_length``,
        ``max_token_len_per_gpu``, ``use_dynamic_bsz``, ``total_training_steps``/
        ``max_steps``, ``truncation``; a ``verl:`` mapping of further
        dotted overrides). Keys for other trainers are ignored. Row counts are read from
        the parquet footers when not given, so `validate` can check the batch size."""
        kwargs: dict[str, Any] = {}
        for key in RECIPE_KEYS:
            value = _recipe_get(recipe, key)
            if key == "total_training_steps" and value == 0:
                value = None  # the embedded recipes' "max_steps: 0" means "not set"
            if value is not None:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        extra = recipe.get("verl") or {}
        if not isinstance(extra, Mapping):
            raise VerlError(f"training recipe's 'verl' must be a mapping, got {extra!r}")
        # absolute: verl runs in output_dir (Hydra writes its outputs/ into the cwd)
        train = tuple(os.path.abspath(f) for f in _as_tuple(train_files))
        val = tuple(os.path.abspath(f) for f in _as_tuple(val_files))
        if count_rows:
            if train_rows is None and train and all(Path(f).is_file() for f in train):
                train_rows = count_parquet_rows(train)
            if val_rows is None and val and all(Path(f).is_file() for f in val):
                val_rows = count_parquet_rows(val)
        cfg = cls(
            train_files=train,
            val_files=val,
            model_path=os.fspath(model_path),
            output_dir=os.path.abspath(output_dir),
            train_rows=train_rows,
            val_rows=val_rows,
            project_name=project_name,
            experiment_name=experiment_name,
            nproc_per_node=nproc_per_node,
            extra=dict(extra),
            device=device,
            **kwargs,
        )
        cfg.validate()
        return cfg

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse configs verl would run wrongly or not at all, with the reason."""

        def positive_int(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise VerlError(f"{name} must be a positive integer, got {value!r}")
            return value

        if not self.train_files:
            raise VerlError("no training files (data.train_files)")
        if not self.model_path:
            raise VerlError("model_path (model.path) is empty")
        if not self.output_dir:
            raise VerlError("output_dir (trainer.default_local_dir) is empty")
        for name in ("max_length", "train_batch_size", "micro_batch_size_per_gpu"):
            positive_int(name)
        positive_int("lora_rank")  # 0 would be full fine-tuning in verl; we train LoRA only
        positive_int("total_epochs")
        nproc = positive_int("nproc_per_node")
        for name in ("lora_alpha", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise VerlError(f"{name} must be > 0, got {value!r}")
            if not math.isfinite(value):
                raise VerlError(f"{name} must be finite, got {value!r}")
        if not self.target_modules:
            raise VerlError("target_modules is empty")
        tbs = self.train_batch_size
        if tbs % nproc:
            raise VerlError(
                f"data.train_batch_size={tbs} is not divisible by nproc_per_node={nproc}: verl "
                f"gives each GPU train_batch_size // nproc = {tbs // nproc} rows per step"
            )
        per_gpu = tbs // nproc
        if self.micro_batch_size_per_gpu > per_gpu:
            raise VerlError(
                f"data.micro_batch_size_per_gpu={self.micro_batch_size_per_gpu} exceeds the "
                f"{per_gpu} rows each GPU gets per step (train_batch_size {tbs} / {nproc} GPUs)"
            )
        if self.train_rows is not None and self.train_rows < tbs:
            raise VerlError(
                f"data.train_batch_size={tbs} exceeds the {self.train_rows} training rows: "
                "verl's sft_trainer drops the last incomplete batch (drop_last=True), so it "
                f"would train zero steps. Use train_batch_size <= {self.train_rows} "
                "(and divisible by the GPU count), or add data."
            )
        if self.val_files and self.val_rows is not None and self.val_rows < tbs:
            raise VerlError(
                f"data.train_batch_size={tbs} exceeds the {self.val_rows} validation rows: "
                "verl batches validation the same way (drop_last=True), so val/loss would be "
                "computed over nothing. Lower train_batch_size, add validation rows, or train "
                "without val_files."
            )
        if self.max_token_len_per_gpu is not None and self.max_token_len_per_gpu < (
            self.max_length
        ):
            raise VerlError(
                f"data.max_token_len_per_gpu={self.max_token_len_per_gpu} is below "
                f"data.max_length={self.max_length}: one full-length row would not fit"
            )
        steps = self.total_training_steps
        if steps is not None:
            positive_int("total_training_steps")
            per_epoch = self.steps_per_epoch()
            if per_epoch is not None and per_epoch * self.total_epochs < steps:
                raise VerlError(
                    f"trainer.total_training_steps={steps} needs more than total_epochs="
                    f"{self.total_epochs} x {per_epoch} steps per epoch: verl's loop ends after "
                    "the last epoch without reaching the last step, so it saves no final "
                    f"checkpoint. Use total_epochs >= {math.ceil(steps / per_epoch)}."
                )
        if self.truncation is not None and self.truncation not in ("error", "left", "right"):
            raise VerlError(
                f"truncation must be 'error', 'left' or 'right', got {self.truncation!r}"
            )
        if self.device not in DEVICES:
            raise VerlError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.resume_mode not in ("disable", "auto"):
            raise VerlError(f"resume_mode must be 'disable' or 'auto', got {self.resume_mode!r}")
        if self.save_freq is not None:
            positive_int("save_freq")
        clash = sorted(set(self.extra) & MANAGED_KEYS)
        if clash:
            raise VerlError(
                f"recipe 'verl' overrides may not set {', '.join(clash)}: use the recipe's "
                "own keys (they are validated)"
            )

    # -- steps -------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch as verl counts them: each of the nproc data-parallel ranks
        gets ``rows // nproc`` rows (``DistributedSampler(drop_last=True)``) in batches of
        ``train_batch_size // nproc`` (``drop_last=True``). None when the row count is
        unknown or an extra override may change the rows or the data-parallel size."""
        if self.train_rows is None or any(
            k.startswith("engine.") or k == "data.train_max_samples" for k in self.extra
        ):
            return None
        per_rank_batch = self.train_batch_size // self.nproc_per_node
        if per_rank_batch <= 0:
            return None
        return (self.train_rows // self.nproc_per_node) // per_rank_batch

    def expected_total_steps(self) -> int | None:
        """The step of verl's final checkpoint (``global_step_N``), when it can be known."""
        if self.total_training_steps is not None:
            return self.total_training_steps
        per_epoch = self.steps_per_epoch()
        return None if per_epoch is None else per_epoch * self.total_epochs

    # -- rendering ---------------------------------------------------------------------------
    def override_items(self) -> list[tuple[str, Any]]:
        """(dotted key, value) pairs in a fixed order."""
        files = list(self.train_files)
        items: list[tuple[str, Any]] = [
            ("data.train_files", files[0] if len(files) == 1 else files),
        ]
        if self.val_files:
            val = list(self.val_files)
            items.append(("data.val_files", val[0] if len(val) == 1 else val))
        max_tok = self.max_token_len_per_gpu
        if max_tok is None and self.max_length > VERL_DEFAULT_MAX_TOKEN_LEN_PER_GPU:
            # verl packs rows up to max_token_len_per_gpu (default 8192) with dynamic batch
            # size on; a longer row would not fit, so raise the budget to max_length.
            max_tok = self.max_length
        items += [
            ("data.custom_cls.path", self.dataset_module),
            ("data.custom_cls.name", self.dataset_class),
            ("data.pad_mode", "no_padding"),
            ("data.max_length", self.max_length),
            ("data.train_batch_size", self.train_batch_size),
            ("data.micro_batch_size_per_gpu", self.micro_batch_size_per_gpu),
        ]
        if self.truncation is not None:
            items.append(("data.truncation", self.truncation))
        if self.use_dynamic_bsz is not None:
            items.append(("data.use_dynamic_bsz", self.use_dynamic_bsz))
        if max_tok is not None:
            items.append(("data.max_token_len_per_gpu", max_tok))
        alpha = self.lora_alpha
        if isinstance(alpha, float) and alpha.is_integer():
            alpha = int(alpha)
        targets = self.target_modules
        items += [
            ("model.path", self.model_path),
            ("model.lora_rank", self.lora_rank),
            ("model.lora_alpha", alpha),
            ("model.target_modules", targets if isinstance(targets, str) else list(targets)),
            ("optim.lr", float(self.lr)),
            ("trainer.total_epochs", self.total_epochs),
        ]
        if self.total_training_steps is not None:
            items.append(("trainer.total_training_steps", self.total_training_steps))
        items += [
            ("trainer.default_local_dir", self.output_dir),
            ("trainer.project_name", self.project_name),
            ("trainer.experiment_name", self.experiment_name),
            ("trainer.logger", list(self.logger)),
            ("trainer.resume_mode", self.resume_mode),
        ]
        if self.save_freq is not None:
            items.append(("trainer.save_freq", self.save_freq))
        if self.device == "cpu":
            items += CPU_OVERRIDES
        items += sorted(self.extra.items())
        return items

    def overrides(self) -> list[str]:
        """Hydra command-line overrides for `python -m verl.trainer.sft_trainer`."""
        return [
            f"{key}={hydra_value(value, quote_strings=key == 'trainer.logger')}"
            for key, value in self.override_items()
        ]

    def as_dict(self) -> dict[str, Any]:
        """The overrides as a nested mapping (what verl's config will hold for these keys)."""
        out: dict[str, Any] = {}
        for key, value in self.override_items():
            node = out
            *parents, leaf = key.removeprefix("+").split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out

    def to_yaml(self) -> str:
        """`as_dict` as YAML: a record for lineage and the UI (verl gets `overrides`)."""
        return yaml.safe_dump(self.as_dict(), sort_keys=False)


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class VerlLauncher:
    """Where verl runs: a Python executable of its own environment (`python`), or a
    container image (`image`) started with `docker run --gpus ...`. Exactly one is set.

    `pythonpath`: directories put on verl's PYTHONPATH so ``pkg://coop_dag.tito.dataset``
    imports (a source checkout; not needed where the project is installed in verl's
    environment, as in deploy/Dockerfile.gpu). In a container, paths are mounted at the
    same path (identity mounts), so every path in the config means the same file inside.
    """

    python: str | None = None
    image: str | None = None
    container_python: str = "python"  # inside the image: runs the model merger
    container_torchrun: str = "torchrun"  # inside the image
    docker: str = "docker"
    gpus: str = "all"
    docker_args: tuple[str, ...] = ("--rm", "--ipc=host")
    mounts: tuple[tuple[str, str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = (*DEFAULT_PASS_ENV, *PIPES_ENV)
    pythonpath: tuple[str, ...] = ()
    name_prefix: str = "coop-dag-verl"

    def __post_init__(self) -> None:
        if bool(self.python) == bool(self.image):
            raise VerlError(
                "VerlLauncher needs exactly one of python= (verl's own environment) or "
                f"image= (a container image); got python={self.python!r}, image={self.image!r}"
            )

    @property
    def kind(self) -> str:
        return "python" if self.python else "container"

    def describe(self) -> str:
        return f"python {self.python}" if self.python else f"image {self.image}"

    def _python_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**self.env, **(extra or {})}
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return env

    def _container(
        self,
        command: Sequence[str],
        mounts: Iterable[tuple[str, str, str]],
        name: str | None,
        gpus: bool,
        extra_env: Mapping[str, str] | None = None,
    ) -> Command:
        name = name or f"{self.name_prefix}-{uuid.uuid4().hex[:8]}"
        env = {**self.env, **(extra_env or {})}
        extra_mounts = [(p, p, "ro") for p in self.pythonpath]
        if self.pythonpath:
            env["PYTHONPATH"] = ":".join(self.pythonpath)
        argv = container_run_argv(
            str(self.image),
            command,
            name=name,
            gpus=self.gpus if gpus else None,
            env=env,
            pass_env=self.pass_env,
            mounts=[*mounts, *extra_mounts, *self.mounts],
            docker_args=self.docker_args,
            docker=self.docker,
        )
        return Command(tuple(argv), {}, container_name=name)


def _executable(python: str) -> str:
    """A path to a python made absolute (verl runs in its output dir); a bare name stays,
    for PATH lookup."""
    return os.path.abspath(python) if os.sep in python else python


def _parent_dirs(paths: Iterable[str]) -> list[str]:
    return [os.path.dirname(os.path.abspath(p)) or "/" for p in paths]


def train_command(
    cfg: VerlSFTConfig,
    launcher: VerlLauncher,
    *,
    name: str | None = None,
    export_to: str | os.PathLike | None = None,
) -> Command:
    """The torchrun command for `cfg` in `launcher`'s environment or container (`name`: the
    container's name; a random one when None): ``-m coop_dag.training.verl_pipes`` (verl's
    ``sft_trainer`` in process, rank 0 reporting through Dagster Pipes when launched with it)
    with `cfg`'s overrides; `export_to`: rank 0 then exports the last checkpoint's adapter to
    ``<export_to>/lora_adapter`` with verl's model merger. ``cfg.device == "cpu"``: `CPU_ENV`
    on top (the overrides are in ``cfg``), and a container gets no GPUs."""
    cfg.validate()
    device_env = device_environment(cfg.device)
    export = ["--export-to", os.path.abspath(os.fspath(export_to))] if export_to else []
    torchrun_args = [
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={cfg.nproc_per_node}",
        "-m",
        TRAINER_MODULE,
        *export,
        *cfg.overrides(),
    ]
    if launcher.python:
        argv = (_executable(launcher.python), "-m", "torch.distributed.run", *torchrun_args)
        return Command(argv, launcher._python_env(device_env))
    mounts: list[tuple[str, str, str]] = [
        (d, d, "ro") for d in _parent_dirs([*cfg.train_files, *cfg.val_files])
    ]
    if os.path.isabs(cfg.model_path):
        mounts.append((cfg.model_path, cfg.model_path, "ro"))
    out = os.path.abspath(cfg.output_dir)
    mounts.append((out, out, "rw"))
    if export:
        mounts.append((export[1], export[1], "rw"))
    return launcher._container(
        [launcher.container_torchrun, *torchrun_args], mounts, name,
        gpus=cfg.device != "cpu", extra_env=device_env,
    )  # fmt: skip


def device_environment(device: str) -> dict[str, str]:
    """Environment variables verl needs for `device` (`CPU_ENV` on the CPU, none on GPUs)."""
    if device not in DEVICES:
        raise VerlError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return dict(CPU_ENV) if device == "cpu" else {}


def merge_command(
    checkpoint_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    launcher: VerlLauncher,
    *,
    backend: str = "fsdp",
    trust_remote_code: bool = False,
    name: str | None = None,
    device: str = "cuda",
) -> Command:
    """The export of a saved checkpoint alone (a run killed after its last save): ``python -m
    coop_dag.training.verl_pipes --export-only <global_step_N> --export-to <dir>`` runs ``python -m
    verl.model_merger merge --backend fsdp --local_dir <global_step_N> --target_dir <dir>`` in
    process and reports the adapter (``<target_dir>/lora_adapter``) and the run's loss curve
    through Dagster Pipes when launched with it. The merger works on the CPU either way;
    ``device="cpu"`` sets `CPU_ENV` so that ``import verl`` in it resolves the same platform
    the trainer ran on. In a container the checkpoint's parent (the run's output dir, with
    its metrics and the Pipes channel) and the target are mounted read-write."""
    device_env = device_environment(device)
    if backend not in ("fsdp", "megatron"):
        raise VerlError(f"model merger backend must be 'fsdp' or 'megatron', got {backend!r}")
    ckpt = os.path.abspath(os.fspath(checkpoint_dir))
    target = os.path.abspath(os.fspath(target_dir))
    args = [
        "-m", TRAINER_MODULE,
        "--export-only", ckpt,
        "--export-to", target,
        "--backend", backend,
    ]  # fmt: skip
    if trust_remote_code:
        args.append("--trust-remote-code")
    if launcher.python:
        return Command((_executable(launcher.python), *args), launcher._python_env(device_env))
    out = os.path.dirname(ckpt)
    mounts = [(out, out, "rw"), (target, target, "rw")]
    return launcher._container(
        [launcher.container_python, *args], mounts, name, gpus=False, extra_env=device_env
    )


def latest_checkpoint(output_dir: str | os.PathLike) -> Path:
    """`<output_dir>/global_step_N` named by verl's tracker file, else the highest N."""
    root = Path(output_dir)
    tracker = root / TRACKER_FILE
    if tracker.is_file():
        step = tracker.read_text().strip()
        candidate = root / f"global_step_{step}"
        if step.isdigit() and candidate.is_dir():
            return candidate
    steps = []
    for p in root.glob("global_step_*") if root.is_dir() else ():
        suffix = p.name.removeprefix("global_step_")
        if p.is_dir() and suffix.isdigit():
            steps.append((int(suffix), p))
    if not steps:
        raise VerlError(f"no verl checkpoint (global_step_N) under {root}")
    return max(steps)[1]


# --------------------------------------------------------------------------- running


def _kill(proc: subprocess.Popen, command: Command, docker: str) -> None:
    stop_group(proc, grace=10)
    if command.container_name:  # the docker client dying does not stop its container
        remove_container(command.container_name, docker=docker)


def run_command(
    command: Command,
    *,
    what: str,
    on_log: LogFn | None = None,
    timeout: float | None = None,
    tail: int = 60,
    cwd: str | os.PathLike | None = None,
    docker: str = "docker",
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run `command` in a process group of its own, streaming each output line (stdout and
    stderr merged) to `on_log`; `env`: variables on top of the command's that are not part of
    it (a Pipes session's: never logged). Returns the last `tail` lines; raises VerlError with
    them if it fails or times out. Anything raised while it runs -- a Dagster run's
    cancellation arrives as an interrupt here, or `on_log` raising -- stops the whole group
    (SIGTERM, SIGKILL after 10 s; a container is removed) before it propagates."""
    last: collections.deque[str] = collections.deque(maxlen=tail)
    env = {**os.environ, **command.env, **(env or {})}
    try:
        proc = start_streaming(command.argv, cwd=cwd, env=env)
    except OSError as exc:
        raise VerlError(f"{what}: cannot start {command.argv[0]!r}: {exc}") from exc
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill(proc, command, docker)

    timer = threading.Timer(timeout, on_timeout) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            last.append(line)
            if on_log is not None:
                on_log(line)
        rc = proc.wait()
    except BaseException:
        _kill(proc, command, docker)
        raise
    finally:
        if timer:
            timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if timed_out.is_set() or rc != 0:
        why = f"timed out after {timeout:g}s" if timed_out.is_set() else f"exit code {rc}"
        shown = "\n".join(last) if last else "(no output)"
        raise VerlError(
            f"{what} failed ({why}): {command.shell()}\n--- last {len(last)} lines ---\n{shown}"
        )
    return list(last)






def _read_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_record(cfg: VerlSFTConfig) -> dict[str, Any]:
    """What a run in ``cfg.output_dir`` trains on: the overrides verl gets, the GPU count and
    the sha256 of every data file. A checkpoint is only ever reused under the same record."""
    files = {}
    for f in (*cfg.train_files, *cfg.val_files):
        files[f] = file_sha256(f) if os.path.isfile(f) else None
    return {
        "format": 1,
        "overrides": cfg.overrides(),
        "nproc_per_node": cfg.nproc_per_node,
        "files": files,
    }


# Modules of ours that verl is told about by name and that moved (issue 18: the flat
# `coop_dag/` became subpackages). A run recorded under an old name trained on the same code:
# its record still matches, so a finished or resumable run is not trained again for a move.
MOVED_MODULES = {"pkg://coop_dag.tito_dataset": DATASET_MODULE}


def _same_record(recorded: Any, record: Mapping[str, Any]) -> bool:
    """Whether the `RUN_RECORD` found on disk is `record`, reading the module paths in its
    overrides through `MOVED_MODULES`."""
    if recorded == record:
        return True
    if not isinstance(recorded, dict) or not isinstance(recorded.get("overrides"), list):
        return False

    def moved(override: Any) -> Any:
        if not isinstance(override, str) or "=" not in override:
            return override
        key, value = override.split("=", 1)
        for old, new in MOVED_MODULES.items():
            value = value.replace(old, new) if value.strip("'\"") == old else value
        return f"{key}={value}"

    return {**recorded, "overrides": [moved(o) for o in recorded["overrides"]]} == dict(record)


def finished_checkpoint(cfg: VerlSFTConfig, record: Mapping[str, Any] | None = None) -> Path | None:
    """The final ``global_step_N`` of a finished run of `cfg` in ``cfg.output_dir``, or None.

    Only a run with the same `run_record` counts. Finished means: verl exited 0 (`run_verl`
    wrote `DONE_FILE` naming the checkpoint), or -- killed after its last save, before
    exiting -- verl's tracker names the expected last step (`expected_total_steps`): verl
    writes the tracker only once that step's checkpoint is complete."""
    root = Path(cfg.output_dir)
    if not _same_record(
        _read_json(root / RUN_RECORD), record if record is not None else run_record(cfg)
    ):
        return None
    done = _read_json(root / DONE_FILE)
    if isinstance(done, dict) and isinstance(done.get("checkpoint"), str):
        candidate = root / done["checkpoint"]
        if candidate.is_dir():
            return candidate
    total = cfg.expected_total_steps()
    tracker = root / TRACKER_FILE
    if total is not None and tracker.is_file():
        candidate = root / f"global_step_{total}"
        if tracker.read_text().strip() == str(total) and candidate.is_dir():
            return candidate
    return None


def _start_run(root: Path, record: Mapping[str, Any], *, resume: bool = False) -> None:
    """Before launching verl (once `finished_checkpoint` found nothing to reuse): drop the done
    marker and verl's tracker, so that after this launch they can only be this launch's --
    except the tracker of the same run when verl is to resume from it (``resume_mode=auto``),
    whose metrics file then goes on too -- then record this run."""
    from coop_dag.training.verl_pipes import METRICS_FILE

    root.mkdir(parents=True, exist_ok=True)
    (root / DONE_FILE).unlink(missing_ok=True)
    same = _same_record(_read_json(root / RUN_RECORD), record)
    if not (same and resume):
        (root / TRACKER_FILE).unlink(missing_ok=True)
        (root / METRICS_FILE).unlink(missing_ok=True)  # a fresh run's curve starts empty
    if not same:
        atomic_write_json(root / RUN_RECORD, dict(record), sort_keys=True, default=str)


@dataclass(frozen=True)
class VerlResult:
    checkpoint_dir: Path  # global_step_N
    merged_dir: Path | None  # model merger's target_dir
    adapter_dir: Path | None  # merged_dir/lora_adapter, repaired and validated
    repairs: tuple[str, ...]  # what repair_adapter changed in verl's export
    adapter: Any  # coop_dag.training.adapters.AdapterInfo | None
    log_tail: tuple[str, ...]
    reused_checkpoint: bool = False  # a finished run's checkpoint was found: no training
    train_time_s: float | None = None  # verl's training process, when it ran (or the record)


@contextlib.contextmanager
def _launch_session(session: LaunchSession | None, root: Path) -> Iterator[Mapping[str, str]]:
    if session is None:
        yield {}
        return
    channel = root / PIPES_DIR
    channel.mkdir(parents=True, exist_ok=True)
    with session(channel) as env:
        yield dict(env)


def run_verl(
    cfg: VerlSFTConfig,
    launcher: VerlLauncher,
    *,
    on_log: LogFn | None = None,
    merge: bool = True,
    merged_dir: str | os.PathLike | None = None,
    repair: bool = True,
    timeout: float | None = None,
    merge_timeout: float | None = 3600.0,
    tail: int = 60,
    reuse_finished: bool = True,
    session: LaunchSession | None = None,
) -> VerlResult:
    """Train with verl, export the LoRA adapter and make it servable.

    1. `train_command` (torchrun -m coop_dag.training.verl_pipes: verl's sft_trainer, then, with
       `merge`, rank 0 exports the last checkpoint into `merged_dir`, default
       ``<output_dir>/merged``), logs streamed to `on_log`, `timeout` for the whole launch --
       or, when ``cfg.output_dir`` already holds the final checkpoint of the same run
       (`finished_checkpoint`; `reuse_finished`), so that a run killed after verl finished
       does not train again, `merge_command` (the export alone; `merge_timeout`);
    2. `repair_adapter` on ``<merged_dir>/lora_adapter`` (0.9.1: the base model, which its
       merger leaves null; an export without verl's LoRA metadata: lora_alpha and task_type
       too), `validate_adapter`, and a check that its rank and alpha are the config's.
    Each launch runs inside `session` when one is given (`LaunchSession`: the asset's Dagster
    Pipes session, whose variables the launch gets; rank 0 reports through it).
    Any failing step raises VerlError carrying its command and the last lines of its output.
    """
    import time

    from coop_dag.training.adapters import AdapterError, repair_adapter, validate_adapter

    cfg.validate()
    check_launcher(launcher)
    log = on_log or (lambda _line: None)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = Path(merged_dir) if merged_dir is not None else root / "merged"
    adapter_dir = target / ADAPTER_SUBDIR
    record = run_record(cfg)
    ckpt = finished_checkpoint(cfg, record) if reuse_finished else None
    lines: list[str] = []
    train_time: float | None = None
    reused = ckpt is not None
    if merge:
        target.mkdir(parents=True, exist_ok=True)
        if adapter_dir.exists():  # an earlier attempt's export: only this launch's counts
            shutil.rmtree(adapter_dir)
    if ckpt is not None:
        log(f"[coop-dag] verl already finished this run: {ckpt}; not training again")
        done = _read_json(root / DONE_FILE)
        if isinstance(done, dict) and isinstance(done.get("train_time_s"), int | float):
            train_time = float(done["train_time_s"])
        if merge:
            export = merge_command(ckpt, target, launcher, device=cfg.device)
            log(f"[coop-dag] verl export: {export.shell()}")
            with _launch_session(session, root) as session_env:
                lines = run_command(
                    export, what="verl export", on_log=log, timeout=merge_timeout, tail=tail,
                    cwd=target, docker=launcher.docker, env=session_env,
                )  # fmt: skip
    else:
        _start_run(root, record, resume=cfg.resume_mode == "auto")
        train = train_command(cfg, launcher, export_to=target if merge else None)
        log(f"[coop-dag] verl train ({launcher.describe()}): {train.shell()}")
        started = time.monotonic()
        with _launch_session(session, root) as session_env:
            lines = run_command(
                train, what="verl sft_trainer", on_log=log, timeout=timeout, tail=tail,
                cwd=root, docker=launcher.docker, env=session_env,
            )  # fmt: skip
        train_time = round(time.monotonic() - started, 2)
        if not (root / TRACKER_FILE).is_file():  # _start_run removed any other launch's
            raise VerlError(
                f"verl sft_trainer exited 0 but saved no checkpoint ({TRACKER_FILE} missing in "
                f"{root}): did its epoch loop end before total_training_steps?\n" + "\n".join(lines)
            )
        ckpt = latest_checkpoint(cfg.output_dir)
        expected = cfg.expected_total_steps()
        if expected is not None and ckpt.name != f"global_step_{expected}":
            log(
                f"[coop-dag] warning: verl's last checkpoint is {ckpt.name}, expected "
                f"global_step_{expected} ({cfg.train_rows} rows, batch {cfg.train_batch_size}, "
                f"{cfg.total_epochs} epochs on {cfg.nproc_per_node} GPUs)"
            )
        atomic_write_json(
            root / DONE_FILE,
            {"checkpoint": ckpt.name, "train_time_s": train_time, "command": train.shell()},
            sort_keys=True,
            default=str,
        )
    log(f"[coop-dag] verl checkpoint: {ckpt}")
    if not merge:
        return VerlResult(
            ckpt, None, None, (), None, tuple(lines),
            reused_checkpoint=reused, train_time_s=train_time,
        )  # fmt: skip

    if not adapter_dir.is_dir():
        raise VerlError(
            f"verl's export wrote no {ADAPTER_SUBDIR}/ under {target} (was the model "
            "trained with model.lora_rank > 0?)\n" + "\n".join(lines)
        )
    repairs: list[str] = []
    try:
        if repair:
            repairs = repair_adapter(
                adapter_dir, lora_alpha=cfg.lora_alpha, base_model=cfg.model_path
            )
            for change in repairs:
                log(f"[coop-dag] repaired verl export: {change}")
        info = validate_adapter(adapter_dir, expected_base=cfg.model_path)
    except AdapterError as exc:
        raise VerlError(f"verl's exported adapter is not servable: {exc}") from exc
    if info.r != cfg.lora_rank or info.lora_alpha != float(cfg.lora_alpha):
        raise VerlError(
            f"verl's exported adapter {adapter_dir} has r={info.r}, lora_alpha="
            f"{info.lora_alpha:g}; it was trained with r={cfg.lora_rank}, lora_alpha="
            f"{cfg.lora_alpha:g} (model.lora_rank / model.lora_alpha)"
        )
    return VerlResult(
        ckpt, target, adapter_dir, tuple(repairs), info, tuple(lines),
        reused_checkpoint=reused, train_time_s=train_time,
    )  # fmt: skip


# --------------------------------------------------------------------------- lora_checkpoint

BACKEND = "verl"  # the `trainer` recorded in lineage (the embedded one: train.BACKEND)
BRIDGE_VERSION = "2"  # bump when what train_lora_verl sends to verl changes: a new run dir
RESULT_FILE = "train_result.json"
LOG_FILE = "verl.log"  # every line verl printed, all attempts (a record; nothing parses it)
CONFIG_RECORD = "verl_config.yaml"
COMMAND_RECORD = "verl_command.txt"
# recipe lr_scheduler -> verl optim.lr_scheduler_type (verl's constant has a warmup too)
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine"}
# recipe keys verl has no counterpart for (recorded in lineage as not applied)
NOT_APPLIED = {
    "lora_dropout": "verl's model config has no LoRA dropout",
    "bf16": "verl trains in its engine's dtype (engine.dtype, bfloat16 by default)",
    "torch_threads": "CPU trainer only",
    # 0.9.1: trainer.seed is read by nothing in sft_trainer; engine.seed only under
    # engine.full_determinism
    "seed": "verl's sft_trainer does not seed LoRA init or data order from its config",
}


def config_for_recipe(
    recipe: Any,
    *,
    train_files: str | os.PathLike | Iterable[str | os.PathLike],
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    val_files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    train_rows: int | None = None,
    val_rows: int | None = None,
    project_name: str = "coop-dag",
    experiment_name: str = "sft",
    nproc_per_node: int = 1,
    device: str = "cuda",
    resume_mode: str = "auto",
) -> VerlSFTConfig:
    """The verl config for a `coop_dag.training.recipes.Recipe` (``configs/recipes.yaml``), with the
    recipe's meaning kept: an optimizer step is ``batch_size x grad_accum`` rows (verl's
    global ``data.train_batch_size``; ``batch_size`` rows per micro batch, capped at what
    one GPU gets); ``max_steps`` (or a fractional ``epochs``) becomes
    ``trainer.total_training_steps`` with enough epochs for verl's loop to reach it;
    ``learning_rate``, ``lr_scheduler`` (constant | constant_with_warmup | cosine; verl has no
    linear), ``warmup_steps``, ``weight_decay`` (verl's default is 0.01), ``max_grad_norm``,
    ``lora_r``/``lora_alpha``/``target_modules``, ``max_length`` and ``truncation``;
    ``save_steps`` becomes ``trainer.save_freq`` and, with `resume_mode` ``auto`` (the run dir
    is the run's own: `run_key`), a relaunch resumes from the newest of those checkpoints.
    `NOT_APPLIED` lists what verl cannot honour."""
    scheduler = SCHEDULERS.get(recipe.lr_scheduler)
    if scheduler is None:
        raise VerlError(
            f"recipe '{recipe.name}': lr_scheduler {recipe.lr_scheduler!r} has no verl "
            f"counterpart (verl's optim.lr_scheduler_type: constant | cosine)"
        )
    train = _as_tuple(train_files)
    if train_rows is None and train and all(Path(f).is_file() for f in train):
        train_rows = count_parquet_rows(train)
    rows_per_step = recipe.batch_size * recipe.grad_accum
    micro = recipe.batch_size
    if nproc_per_node > 0 and rows_per_step >= nproc_per_node:
        micro = min(micro, rows_per_step // nproc_per_node)
    per_epoch = None
    if train_rows is not None and nproc_per_node > 0 and rows_per_step >= nproc_per_node:
        per_epoch = (train_rows // nproc_per_node) // (rows_per_step // nproc_per_node)
    epochs = max(1, math.ceil(recipe.epochs))
    total: int | None = None
    if recipe.max_steps > 0:
        total = recipe.max_steps
    elif not float(recipe.epochs).is_integer() and per_epoch:
        total = max(1, math.ceil(per_epoch * recipe.epochs))  # as the embedded trainer
    if total is not None and per_epoch:
        epochs = math.ceil(total / per_epoch)
    targets = recipe.target_modules
    mapping: dict[str, Any] = {
        "lora_rank": recipe.lora_r,
        "lora_alpha": recipe.lora_alpha,
        "target_modules": list(targets) if isinstance(targets, tuple) else targets,
        "lr": recipe.learning_rate,
        "total_epochs": epochs,
        "train_batch_size": rows_per_step,
        "micro_batch_size_per_gpu": micro,
        "max_length": recipe.max_length,
        "truncation": recipe.truncation,
        "total_training_steps": total,
        "save_freq": recipe.save_steps if recipe.save_steps > 0 else None,
        "resume_mode": resume_mode,
        "verl": {
            "optim.lr_scheduler_type": scheduler,
            "optim.lr_warmup_steps": (
                0 if recipe.lr_scheduler == "constant" else int(recipe.warmup_steps)
            ),
            "optim.weight_decay": float(recipe.weight_decay),
            "optim.clip_grad": float(recipe.max_grad_norm),
        },
    }
    return VerlSFTConfig.from_recipe(
        mapping,
        train_files=train,
        val_files=val_files,
        model_path=model_path,
        output_dir=output_dir,
        train_rows=train_rows,
        val_rows=val_rows,
        project_name=project_name,
        experiment_name=experiment_name,
        nproc_per_node=nproc_per_node,
        device=device,
    )


def run_key(
    student: Any,
    recipe: Any,
    train_sha: str,
    val_sha: str | None,
    nproc: int,
    device: str = "cuda",
) -> str:
    """What identifies a verl run (its directory): student, recipe, data, GPU count, and the
    device when it is the CPU (a GPU run keeps the key it always had)."""
    from coop_dag.training.contract import run_key_for

    engine: dict[str, Any] = {"backend": BACKEND, "bridge_version": BRIDGE_VERSION}
    if device != "cuda":
        engine["device"] = device
    return run_key_for(student, recipe, train_sha, val_sha, nproc=nproc, **engine)


def check_launcher(launcher: VerlLauncher) -> None:
    """Fail before anything is prepared when verl's own python is not there."""
    if launcher.python and not os.access(launcher.python, os.X_OK):
        raise VerlError(
            f"verl's environment is missing: {launcher.python} is not an executable python. "
            "On this machine run `bash scripts/verl_venv.sh` (it builds .venv-verl, or "
            "$COOP_DAG_VERL_VENV); elsewhere set COOP_DAG_VERL_PYTHON to verl's python."
        )


def metrics_from_file(
    output_dir: str | os.PathLike,
) -> tuple[dict[int, dict[str, float]], int]:
    """Per-step metrics of the run in `output_dir`, as rank 0 recorded them from verl's step
    loop (`verl_pipes.METRICS_FILE`; a later attempt's record for a step replaces an
    earlier one's), and the step the last attempt resumed from (0: none)."""
    from coop_dag.training.verl_pipes import read_metrics

    return read_metrics(output_dir)


def _lora_params(adapter_dir: Path) -> int:
    from safetensors import safe_open

    from coop_dag.training.adapters import ADAPTER_WEIGHTS

    total = 0
    with safe_open(os.fspath(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():
            if ".lora_" in key:
                total += math.prod(f.get_slice(key).get_shape())
    return total


def train_lora_verl(
    student: Any,
    train_path: str | os.PathLike,
    val_path: str | os.PathLike | None,
    recipe: Any,
    work_dir: str | os.PathLike,
    launcher: VerlLauncher,
    *,
    nproc: int = 1,
    on_log: LogFn | None = None,
    data_version: str | None = None,
    facts: Mapping[str, Any] | None = None,
    force: bool = False,
    experiment_name: str = "sft",
    timeout: float | None = None,
    merge_timeout: float | None = 3600.0,
    device: str = "cuda",
    session: LaunchSession | None = None,
) -> Any:
    """`training.train.train_lora`'s contract, trained by verl (``device="cpu"``: verl on this
    machine's CPU, `CPU_OVERRIDES`/`CPU_ENV`; the same trainer, dataset and export): a LoRA
    adapter for `student` on the TITO parquet `train_path` (validation on `val_path`),
    returned as the same `coop_dag.training.train.TrainResult` with the same `lineage.json` facts
    (``trainer: "verl"``).

    The run lives in ``<work_dir>/verl-<run_key>/``:

    - ``data/{train,val}.parquet``: the TITO rows prepared for the recipe exactly as the
      embedded trainer prepares them (`coop_dag.training.train.prepare_rows`: max_turn, packing,
      truncation), except that upweight is always trained as copies -- verl's SFT loss has
      no per-row weight, so a weighted row would silently count once (a non-integer weight
      is refused). The parquet's tokenizer and chat template are checked first.
    - ``verl_config.yaml`` (`VerlSFTConfig.to_yaml`, from `config_for_recipe`) and
      ``verl_command.txt``: what verl is sent.
    - ``checkpoints/``: verl's ``trainer.default_local_dir`` (``global_step_N`` every
      ``save_steps``; a relaunch resumes from the newest, `run_verl` reuses a finished one)
      with ``coop_dag_verl_metrics.jsonl``, the metrics rank 0 took from verl's step loop (the
      loss curve; `coop_dag.training.verl_pipes`), ``merged/``: the model merger's export,
      ``verl.log``: every line verl printed (each also goes to `on_log`).
    - `session`: each verl launch runs inside it (``lora_checkpoint``'s Dagster Pipes
      session: rank 0 reports the steps, the loss curve and the exported adapter to Dagster).
    - ``adapter/``: the repaired, validated PEFT export plus ``lineage.json`` and
      ``loss_curve.{json,png}``; ``train_result.json`` once all is done -- a rerun then
      returns it (``reused``) without starting verl. ``force``: start the run over.
    """
    import time

    from coop_dag.training.adapters import ADAPTER_WEIGHTS, write_lineage
    from coop_dag.training.contract import (
        TrainResult,
        copy_adapter,
        run_lineage,
        write_loss_curve,
    )
    from coop_dag.training.errors import EmptyTrainingSetError
    from coop_dag.training.recipes import get_recipe
    from coop_dag.training.rows import (
        check_parquet_identity,
        prepare_rows,
        read_parquet_rows,
        write_rows,
    )
    from coop_dag.training.verl_pipes import STEP_TIME_KEY

    started = time.monotonic()
    if isinstance(student, str):
        from coop_dag.training.students import get_student

        student = get_student(student)
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    log = on_log or (lambda _line: None)
    train_path = Path(train_path)
    val_path = Path(val_path) if val_path else None

    rows, meta = read_parquet_rows(train_path)
    check_parquet_identity(
        train_path, meta, student.tokenizer_sha256, student.chat_template_sha256,
        student=student.name,
    )  # fmt: skip
    val_raw: list[dict] = []
    if val_path is not None and val_path.is_file():
        val_raw, val_meta = read_parquet_rows(val_path)
        check_parquet_identity(
            val_path, val_meta, student.tokenizer_sha256, student.chat_template_sha256,
            student=student.name,
        )  # fmt: skip
    if not rows:
        raise EmptyTrainingSetError(f"{train_path}: the training parquet has no row")
    as_copies = recipe.replace(upweight_mode="duplicate")
    train_rows, prep = prepare_rows(rows, as_copies)
    if not train_rows:
        raise EmptyTrainingSetError(
            f"{train_path}: no training row left after preparing {prep.rows_in} rows for recipe "
            f"'{recipe.name}': {prep.as_dict()}"
        )
    weighted = sorted({float(r["weight"]) for r in train_rows if float(r["weight"]) != 1.0})
    if weighted:
        raise VerlError(
            f"{train_path}: rows with loss weights {weighted[:5]} cannot be trained as copies "
            "and verl's SFT loss has no per-row weight; use integer upweights"
        )
    val_rows, val_prep = prepare_rows(val_raw, as_copies, expand=False)
    if recipe.max_val_rows > 0:
        val_rows = val_rows[: recipe.max_val_rows]
    rows_per_step = recipe.batch_size * recipe.grad_accum
    if val_rows and len(val_rows) < rows_per_step:
        log(
            f"[coop-dag] no validation: {len(val_rows)} val rows < {rows_per_step} rows per "
            "step, and verl drops the last incomplete batch (drop_last=True)"
        )
        val_rows = []

    train_sha = file_sha256(train_path)
    val_sha = file_sha256(val_path) if val_path is not None and val_path.is_file() else None
    key = run_key(student, recipe, train_sha, val_sha, nproc, device)
    run_dir = Path(work_dir) / f"verl-{key}"
    adapter_dir = run_dir / "adapter"
    result_file = run_dir / RESULT_FILE
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    done = _read_json(result_file)
    if isinstance(done, dict) and (adapter_dir / ADAPTER_WEIGHTS).is_file():
        log(f"[coop-dag] verl run {key} already finished: {adapter_dir}")
        done.update(reused=True, wall_time_s=round(time.monotonic() - started, 2))
        return TrainResult.from_record(done)
    run_dir.mkdir(parents=True, exist_ok=True)

    data_meta = {
        "format": meta.get("format"),
        "variant": meta.get("variant"),
        "tokenizer": meta.get("tokenizer"),
        "chat_template_sha256": meta.get("chat_template_sha256"),
        "prepared_for_recipe": as_copies.to_json(),
        "prepared_for": BACKEND,
        "source": str(train_path),
    }
    data_dir = run_dir / "data"
    train_file = data_dir / "train.parquet"
    val_file = data_dir / "val.parquet" if val_rows else None
    if not train_file.is_file():  # deterministic: a rerun keeps the file (and the run record)
        write_rows(train_rows, train_file, data_meta)
    if val_file is not None and not val_file.is_file():
        write_rows(val_rows, val_file, {**data_meta, "source": str(val_path)})

    cfg = config_for_recipe(
        recipe,
        train_files=train_file,
        val_files=val_file,
        train_rows=len(train_rows),
        val_rows=len(val_rows),
        model_path=str(student.model_dir),
        output_dir=run_dir / "checkpoints",
        experiment_name=experiment_name,
        nproc_per_node=nproc,
        device=device,
    )
    check_launcher(launcher)
    command = train_command(cfg, launcher, export_to=run_dir / "merged")  # what run_verl runs
    (run_dir / CONFIG_RECORD).write_text(cfg.to_yaml())
    (run_dir / COMMAND_RECORD).write_text(command.shell() + "\n")
    log(
        f"[coop-dag] verl run {run_dir}: {len(train_rows)} rows ({len(val_rows)} val), "
        f"{cfg.expected_total_steps()} steps, recipe {recipe.name}, {launcher.describe()}"
    )

    with (run_dir / LOG_FILE).open("a", encoding="utf-8") as log_file:

        def tee(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            log(line)

        verl = run_verl(
            cfg, launcher, on_log=tee, merged_dir=run_dir / "merged", timeout=timeout,
            merge_timeout=merge_timeout, session=session,
        )  # fmt: skip
    assert verl.adapter_dir is not None and verl.adapter is not None

    steps = int(verl.checkpoint_dir.name.removeprefix("global_step_"))
    per_epoch = cfg.steps_per_epoch()
    recorded, resumed_from = metrics_from_file(cfg.output_dir)
    metrics = {s: m for s, m in recorded.items() if s <= steps}
    tokens, train_curve, val_curve = 0, [], []
    for step in sorted(metrics):
        m = metrics[step]
        epoch = round(step / per_epoch, 4) if per_epoch else None
        tokens += int(m.get("train/global_tokens", 0))
        if "train/loss" in m:
            train_curve.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": m["train/loss"],
                    "learning_rate": m.get("train/lr"),
                    "tokens_seen": tokens,
                    "step_time_s": m.get(STEP_TIME_KEY),  # verl's train_batch call
                }
            )
        if "val/loss" in m:
            val_curve.append({"step": step, "epoch": epoch, "val_loss": m["val/loss"]})
    last = [t["loss"] for t in train_curve[-5:]]
    train_loss = float(sum(last) / len(last)) if last else None
    final_val = val_curve[-1]["val_loss"] if val_curve else None
    epochs = round(steps / per_epoch, 4) if per_epoch else float(cfg.total_epochs)
    rows_trained = steps * cfg.train_batch_size
    trained_tokens = round(prep.trained_tokens * rows_trained / max(1, len(train_rows)))
    train_time = verl.train_time_s or 0.0
    trainable = _lora_params(verl.adapter_dir)
    data_version = data_version or train_sha[:16]
    lineage: dict[str, Any] = {
        **run_lineage(
            student, recipe, facts, meta, data_version,
            (train_path, train_sha), (val_path, val_sha),
            trainer=BACKEND, trainer_version=BRIDGE_VERSION,
        ),  # fmt: skip
        "recipe_not_applied": {
            k: why for k, why in NOT_APPLIED.items() if k == "seed" or recipe.to_json().get(k)
        },
        "seed": recipe.seed,
        "run_key": key,
        "steps": steps,
        "max_steps": cfg.expected_total_steps() or steps,
        "epochs": epochs,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "prep": prep.as_dict(),
        "tokens_seen": tokens,
        "trained_tokens": trained_tokens,
        "trained_tokens_estimated": True,  # from the prepared rows and the steps verl ran
        "train_loss": train_loss,
        "initial_val_loss": None,  # verl validates after steps only
        "final_val_loss": final_val,
        "trainable_params": trainable,
        "total_params": None,
        "lora_r": verl.adapter.r,
        "lora_alpha": verl.adapter.lora_alpha,
        "train_time_s": train_time,
        "resumed_from_step": resumed_from or None,
        "versions": {"verl": launcher.describe()},
        "verl_nproc": nproc,
        "verl_device": device,
        "verl_config": cfg.as_dict(),
        "verl_command": command.shell(),
        "verl_checkpoint": str(verl.checkpoint_dir),
        "verl_export": str(verl.adapter_dir),
        "verl_export_repairs": list(verl.repairs),
        "verl_reused_checkpoint": verl.reused_checkpoint,
    }

    # the adapter: verl's repaired export + lineage + loss curve, staged then renamed
    stage = run_dir / ".stage-adapter"
    shutil.rmtree(stage, ignore_errors=True)
    copy_adapter(verl.adapter_dir, stage)
    write_lineage(stage, lineage)
    title = f"{student.name} / {recipe.name} / verl / {verl.adapter.name}"
    json_path, png_path = write_loss_curve(stage, train_curve, val_curve, title)
    for item in stage.iterdir():
        os.chmod(item, 0o644)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(stage, adapter_dir)

    result = TrainResult(
        adapter_dir=adapter_dir,
        run_dir=run_dir,
        run_key=key,
        steps=steps,
        max_steps=lineage["max_steps"],
        epochs=epochs,
        train_loss=train_loss,
        initial_val_loss=None,
        final_val_loss=final_val,
        val_losses=val_curve,
        train_losses=train_curve,
        tokens_seen=tokens,
        trained_tokens=trained_tokens,
        wall_time_s=round(time.monotonic() - started, 2),
        train_time_s=train_time,
        tokens_per_s=round(tokens / train_time, 2) if train_time > 0 else 0.0,
        trainable_params=trainable,
        total_params=None,
        resumed_from_step=resumed_from or None,
        reused=False,
        train_rows=len(train_rows),
        val_rows=len(val_rows),
        prep={"train": prep.as_dict(), "val": val_prep.as_dict()},
        recipe=recipe.to_json(),
        lineage=lineage,
        loss_curve_json=adapter_dir / json_path.name,
        loss_curve_png=adapter_dir / png_path.name if png_path else None,
        adapter_sha12=verl.adapter.sha12,
        extra={
            "trainer": BACKEND,
            "verl_checkpoint": str(verl.checkpoint_dir),
            "verl_reused_checkpoint": verl.reused_checkpoint,
            "verl_export_repairs": list(verl.repairs),
        },
    )
    atomic_write_json(result_file, result.as_dict(), sort_keys=True, default=str)
    return result
