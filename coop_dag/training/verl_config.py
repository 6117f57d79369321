"""verl's SFT config: `VerlSFTConfig` (validated, rendered as Hydra overrides), the CPU setup.

`VerlSFTConfig` holds everything ``verl.trainer.sft_trainer`` needs for one LoRA run over TITO
parquet; `VerlSFTConfig.overrides` renders it as Hydra command-line overrides (`hydra_value`),
`VerlSFTConfig.validate` refuses configs verl would run wrongly or not at all. verl reads our
TITO parquet through ``data.custom_cls`` = ``pkg://coop_dag.tito.dataset`` / ``TitoSFTDataset``
(`DATASET_MODULE`: part of every run record, `coop_dag.training.verl_run`). On a machine
without GPUs, ``device="cpu"`` runs the same trainer, dataset and export on the CPU
(`CPU_OVERRIDES`, `CPU_ENV`, the platform in `training.verl_cpu_platform`). This module never
imports verl. The launch is `coop_dag.training.verl_launch`; a run, `coop_dag.training.verl_run`;
the recipe mapping and ``lora_checkpoint``'s trainer, `coop_dag.training.verl`.

Checked against verl 0.9.1 as installed from PyPI (and run: tests/e2e/test_verl_real.py), on every
key used here: ``verl/trainer/config/sft_trainer_engine.yaml`` (data.* incl. truncation,
trainer.* incl. total_training_steps), ``config/model/hf_model.yaml`` (model.path, lora_rank,
lora_alpha, target_modules), ``config/optim/fsdp.yaml`` (optim.lr, lr_scheduler_type,
lr_warmup_steps, weight_decay, clip_grad), ``verl/trainer/sft_trainer.py`` (hydra main,
``create_sft_dataset`` -> ``load_extern_object(custom_cls.path, custom_cls.name)``, the
``DistributedSampler``/``StatefulDataLoader`` with ``drop_last=True`` for train *and* val,
``total_training_steps = len(dataloader) * total_epochs`` unless set, a loop over
``total_epochs`` that saves only on the last step or every ``save_freq``, the console logger's
``step:N - key:value`` lines), ``config/engine/fsdp.yaml`` (strategy, use_torch_compile). The
override value syntax follows Hydra's override grammar (facebookresearch/hydra
``hydra/grammar/OverrideLexer.g4``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CPU_ENV",
    "CPU_OVERRIDES",
    "DATASET_CLASS",
    "DATASET_MODULE",
    "DEVICES",
    "VerlError",
    "VerlSFTConfig",
    "count_parquet_rows",
    "device_environment",
    "file_paths",
    "hydra_value",
]

DATASET_MODULE = "pkg://coop_dag.tito.dataset"
DATASET_CLASS = "TitoSFTDataset"
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


class VerlError(RuntimeError):
    """A bad training config, or a verl process that failed (with its last output lines)."""


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


def file_paths(files: str | os.PathLike | Iterable[str | os.PathLike] | None) -> tuple[str, ...]:
    """One path or many (None: none) as a tuple of path strings."""
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
        train = tuple(os.path.abspath(f) for f in file_paths(train_files))
        val = tuple(os.path.abspath(f) for f in file_paths(val_files))
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
        self._check_required()
        self._check_numbers()
        self._check_batching()
        self._check_steps()
        self._check_choices()

    def _positive_int(self, name: str) -> int:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise VerlError(f"{name} must be a positive integer, got {value!r}")
        return value

    def _check_required(self) -> None:
        if not self.train_files:
            raise VerlError("no training files (data.train_files)")
        if not self.model_path:
            raise VerlError("model_path (model.path) is empty")
        if not self.output_dir:
            raise VerlError("output_dir (trainer.default_local_dir) is empty")

    def _check_numbers(self) -> None:
        for name in ("max_length", "train_batch_size", "micro_batch_size_per_gpu"):
            self._positive_int(name)
        self._positive_int("lora_rank")  # 0 would be full fine-tuning in verl; we train LoRA only
        self._positive_int("total_epochs")
        self._positive_int("nproc_per_node")
        for name in ("lora_alpha", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise VerlError(f"{name} must be > 0, got {value!r}")
            if not math.isfinite(value):
                raise VerlError(f"{name} must be finite, got {value!r}")
        if not self.target_modules:
            raise VerlError("target_modules is empty")

    def _check_batching(self) -> None:
        """verl's batches: split evenly over the GPUs, and never larger than the data (verl
        drops the last incomplete batch of train and val alike)."""
        tbs, nproc = self.train_batch_size, self.nproc_per_node
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

    def _check_steps(self) -> None:
        steps = self.total_training_steps
        if steps is not None:
            self._positive_int("total_training_steps")
            per_epoch = self.steps_per_epoch()
            if per_epoch is not None and per_epoch * self.total_epochs < steps:
                raise VerlError(
                    f"trainer.total_training_steps={steps} needs more than total_epochs="
                    f"{self.total_epochs} x {per_epoch} steps per epoch: verl's loop ends after "
                    "the last epoch without reaching the last step, so it saves no final "
                    f"checkpoint. Use total_epochs >= {math.ceil(steps / per_epoch)}."
                )

    def _check_choices(self) -> None:
        if self.truncation is not None and self.truncation not in ("error", "left", "right"):
            raise VerlError(
                f"truncation must be 'error', 'left' or 'right', got {self.truncation!r}"
            )
        if self.device not in DEVICES:
            raise VerlError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.resume_mode not in ("disable", "auto"):
            raise VerlError(f"resume_mode must be 'disable' or 'auto', got {self.resume_mode!r}")
        if self.save_freq is not None:
            self._positive_int("save_freq")
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


def device_environment(device: str) -> dict[str, str]:
    """Environment variables verl needs for `device` (`CPU_ENV` on the CPU, none on GPUs)."""
    if device not in DEVICES:
        raise VerlError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return dict(CPU_ENV) if device == "cpu" else {}
