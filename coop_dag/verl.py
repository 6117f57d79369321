"""verl's engine SFT trainer as the cluster training engine: config, commands, launch.

verl runs in its own environment (a separate Python, or a container image): installing it
next to Dagster downgrades antlr4 and breaks Dagster's selection parser. This module never
imports verl; it builds the command lines and runs them as subprocesses.

Training: ``torchrun --standalone --nnodes=1 --nproc_per_node=N -m verl.trainer.sft_trainer
<hydra overrides>`` — the engine SFT trainer (Hydra config ``sft_trainer_engine``), which
reads our TITO parquet through ``data.custom_cls`` = ``pkg://coop_dag.tito_dataset`` /
``TitoSFTDataset`` (so the project must be importable in verl's environment). Export:
``python -m verl.model_merger merge --backend fsdp --local_dir <global_step_N>
--target_dir <dir>``, which writes the PEFT adapter to ``<dir>/lora_adapter`` — with
``lora_alpha: 0`` and, in 0.7.1 with peft >= 0.13, a broken ``task_type``; `run_verl`
repairs and validates it (`coop_dag.adapters`).

Checked against volcengine/verl at tag v0.7.0 (f9c855f7cf04d603c9546bc01776c74806a879c1) and
main b178a3cd56f58b2d502255daba591e92833930a7 (0.8.0.dev, 2026-01-29), which agree on every
key used here: ``verl/trainer/config/sft_trainer_engine.yaml`` (data.*, trainer.*),
``config/model/hf_model.yaml`` (model.path, lora_rank, lora_alpha, target_modules),
``config/optim/fsdp.yaml`` (optim.lr), ``verl/trainer/sft_trainer.py`` (hydra main,
``create_sft_dataset`` -> ``load_extern_object(custom_cls.path, custom_cls.name)``, the
``DistributedSampler``/``StatefulDataLoader`` with ``drop_last=True`` for train *and* val, the
``default_local_dir/global_step_N`` checkpoints and ``latest_checkpointed_iteration.txt``),
``verl/model_merger/base_model_merger.py`` (CLI flags; ``save_lora_adapter`` writes
``lora_alpha: 0`` and ``<target_dir>/lora_adapter``). The override value syntax follows
Hydra's override grammar (facebookresearch/hydra ``hydra/grammar/OverrideLexer.g4``).
"""

from __future__ import annotations

import collections
import math
import os
import re
import shlex
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DATASET_CLASS",
    "DATASET_MODULE",
    "TRAINER_MODULE",
    "MERGER_MODULE",
    "Command",
    "VerlError",
    "VerlLauncher",
    "VerlResult",
    "VerlSFTConfig",
    "container_run_argv",
    "count_parquet_rows",
    "hydra_value",
    "latest_checkpoint",
    "merge_command",
    "run_command",
    "run_verl",
    "train_command",
]

TRAINER_MODULE = "verl.trainer.sft_trainer"
MERGER_MODULE = "verl.model_merger"
DATASET_MODULE = "pkg://coop_dag.tito_dataset"
DATASET_CLASS = "TitoSFTDataset"
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint tracker name
ADAPTER_SUBDIR = "lora_adapter"  # where verl's merger puts the PEFT adapter
VERL_DEFAULT_MAX_TOKEN_LEN_PER_GPU = 8192  # sft_trainer_engine.yaml: data.max_token_len_per_gpu

# Environment variables handed to a container by name only (`-e NAME`): docker copies the
# caller's value when set, and no secret ever appears on a command line.
DEFAULT_PASS_ENV = ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME", "WANDB_API_KEY")

LogFn = Callable[[str], None]


class VerlError(RuntimeError):
    """A bad training config, or a verl process that failed (with its last output lines)."""


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    """A process to start: argv, plus environment variables set on top of the caller's."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    container_name: str | None = None  # set when argv is a `docker run`: removed on abort

    def shell(self) -> str:
        """A copy-pasteable shell line (env assignments first), for logs and docs."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


def _mount_list(
    mounts: Iterable[tuple[str, str, str]],
) -> list[tuple[str, str, str]]:
    """Dedupe (host, container, mode) mounts; a path mounted rw and ro ends up rw."""
    seen: dict[tuple[str, str], str] = {}
    for host, container, mode in mounts:
        key = (os.fspath(host), os.fspath(container))
        if key in seen and seen[key] == "rw":
            continue
        seen[key] = mode
    return [(h, c, m) for (h, c), m in seen.items()]


def container_run_argv(
    image: str,
    command: Sequence[str],
    *,
    name: str | None = None,
    gpus: str | None = "all",
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    mounts: Iterable[tuple[str, str, str]] = (),
    publish: Sequence[str] = (),
    docker_args: Sequence[str] = ("--rm", "--ipc=host"),
    workdir: str | None = None,
    entrypoint: str | None = None,
    docker: str = "docker",
) -> list[str]:
    """`docker run` in the foreground (logs on stdout; `--rm` cleans up):
    ``docker run <docker_args> [--gpus G] [--name N] [-e K=V]... [-e NAME]... [-v h:c:m]...
    [-p P]... [-w W] [--entrypoint E] <image> <command...>``."""
    argv = [docker, "run", *docker_args]
    if gpus:
        argv += ["--gpus", gpus]
    if name:
        argv += ["--name", name]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    for key in pass_env:
        argv += ["-e", key]
    for host, container, mode in _mount_list(mounts):
        argv += ["-v", f"{host}:{container}:{mode}"]
    for port in publish:
        argv += ["-p", port]
    if workdir:
        argv += ["-w", workdir]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    argv += [image, *command]
    return argv


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
    "lora_rank": ("lora_rank", "rank", "r"),
    "lora_alpha": ("lora_alpha", "alpha"),
    "target_modules": ("target_modules",),
    "lr": ("lr", "learning_rate"),
    "total_epochs": ("total_epochs", "epochs"),
    "train_batch_size": ("train_batch_size", "batch_size"),
    "micro_batch_size_per_gpu": ("micro_batch_size_per_gpu", "micro_batch_size"),
    "max_length": ("max_length", "max_seq_len"),
    "max_token_len_per_gpu": ("max_token_len_per_gpu",),
    "use_dynamic_bsz": ("use_dynamic_bsz",),
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
        "model.path",
        "model.lora_rank",
        "model.lora_alpha",
        "model.target_modules",
        "optim.lr",
        "trainer.total_epochs",
        "trainer.default_local_dir",
        "trainer.project_name",
        "trainer.experiment_name",
        "trainer.logger",
        "trainer.resume_mode",
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
    resume_mode: str = "disable"  # a fresh output_dir per data version; "auto" to resume
    max_token_len_per_gpu: int | None = None
    use_dynamic_bsz: bool | None = None
    dataset_module: str = DATASET_MODULE
    dataset_class: str = DATASET_CLASS
    extra: Mapping[str, Any] = field(default_factory=dict)  # more dotted overrides

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
    ) -> VerlSFTConfig:
        """Build from a training recipe (``lora_rank``/``rank``, ``lora_alpha``/``alpha``,
        ``target_modules``, ``lr``, ``total_epochs``/``epochs``, ``train_batch_size``/
        ``batch_size``, ``micro_batch_size_per_gpu``/``micro_batch_size``, ``max_length``,
        ``max_token_len_per_gpu``, ``use_dynamic_bsz``; a ``verl:`` mapping of further
        dotted overrides). Keys for other trainers are ignored. Row counts are read from
        the parquet footers when not given, so `validate` can check the batch size."""
        kwargs: dict[str, Any] = {}
        for key in RECIPE_KEYS:
            value = _recipe_get(recipe, key)
            if value is not None:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        extra = recipe.get("verl") or {}
        if not isinstance(extra, Mapping):
            raise VerlError(f"training recipe's 'verl' must be a mapping, got {extra!r}")
        train = _as_tuple(train_files)
        val = _as_tuple(val_files)
        if count_rows:
            if train_rows is None and train and all(Path(f).is_file() for f in train):
                train_rows = count_parquet_rows(train)
            if val_rows is None and val and all(Path(f).is_file() for f in val):
                val_rows = count_parquet_rows(val)
        cfg = cls(
            train_files=train,
            val_files=val,
            model_path=os.fspath(model_path),
            output_dir=os.fspath(output_dir),
            train_rows=train_rows,
            val_rows=val_rows,
            project_name=project_name,
            experiment_name=experiment_name,
            nproc_per_node=nproc_per_node,
            extra=dict(extra),
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
        if self.resume_mode not in ("disable", "auto"):
            raise VerlError(f"resume_mode must be 'disable' or 'auto', got {self.resume_mode!r}")
        clash = sorted(set(self.extra) & MANAGED_KEYS)
        if clash:
            raise VerlError(
                f"recipe 'verl' overrides may not set {', '.join(clash)}: use the recipe's "
                "own keys (they are validated)"
            )

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
            ("trainer.default_local_dir", self.output_dir),
            ("trainer.project_name", self.project_name),
            ("trainer.experiment_name", self.experiment_name),
            ("trainer.logger", list(self.logger)),
            ("trainer.resume_mode", self.resume_mode),
        ]
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
            *parents, leaf = key.split(".")
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

    `pythonpath`: directories put on verl's PYTHONPATH so ``pkg://coop_dag.tito_dataset``
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
    pass_env: tuple[str, ...] = DEFAULT_PASS_ENV
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

    def _python_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return env

    def _container(
        self,
        command: Sequence[str],
        mounts: Iterable[tuple[str, str, str]],
        name: str | None,
        gpus: bool,
    ) -> Command:
        name = name or f"{self.name_prefix}-{uuid.uuid4().hex[:8]}"
        env = dict(self.env)
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


def _parent_dirs(paths: Iterable[str]) -> list[str]:
    return [os.path.dirname(os.path.abspath(p)) or "/" for p in paths]


def train_command(
    cfg: VerlSFTConfig, launcher: VerlLauncher, *, name: str | None = None
) -> Command:
    """The torchrun command for `cfg` in `launcher`'s environment or container (`name`: the
    container's name; a random one when None)."""
    cfg.validate()
    torchrun_args = [
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={cfg.nproc_per_node}",
        "-m",
        TRAINER_MODULE,
        *cfg.overrides(),
    ]
    if launcher.python:
        argv = (launcher.python, "-m", "torch.distributed.run", *torchrun_args)
        return Command(argv, launcher._python_env())
    mounts: list[tuple[str, str, str]] = [
        (d, d, "ro") for d in _parent_dirs([*cfg.train_files, *cfg.val_files])
    ]
    if os.path.isabs(cfg.model_path):
        mounts.append((cfg.model_path, cfg.model_path, "ro"))
    out = os.path.abspath(cfg.output_dir)
    mounts.append((out, out, "rw"))
    return launcher._container(
        [launcher.container_torchrun, *torchrun_args], mounts, name, gpus=True
    )


def merge_command(
    checkpoint_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    launcher: VerlLauncher,
    *,
    backend: str = "fsdp",
    trust_remote_code: bool = False,
    name: str | None = None,
) -> Command:
    """``python -m verl.model_merger merge --backend fsdp --local_dir <global_step_N>
    --target_dir <dir>``; the adapter lands in ``<target_dir>/lora_adapter``."""
    if backend not in ("fsdp", "megatron"):
        raise VerlError(f"model merger backend must be 'fsdp' or 'megatron', got {backend!r}")
    ckpt = os.path.abspath(os.fspath(checkpoint_dir))
    target = os.path.abspath(os.fspath(target_dir))
    args = [
        "-m", MERGER_MODULE, "merge",
        "--backend", backend,
        "--local_dir", ckpt,
        "--target_dir", target,
    ]  # fmt: skip
    if trust_remote_code:
        args.append("--trust-remote-code")
    if launcher.python:
        return Command((launcher.python, *args), launcher._python_env())
    mounts = [(ckpt, ckpt, "ro"), (target, target, "rw")]
    return launcher._container([launcher.container_python, *args], mounts, name, gpus=False)


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
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    if command.container_name:  # the docker client dying does not stop its container
        subprocess.run(
            [docker, "rm", "-f", command.container_name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def run_command(
    command: Command,
    *,
    what: str,
    on_log: LogFn | None = None,
    timeout: float | None = None,
    tail: int = 60,
    cwd: str | os.PathLike | None = None,
    docker: str = "docker",
) -> list[str]:
    """Run `command`, streaming each output line (stdout and stderr merged) to `on_log`.
    Returns the last `tail` lines; raises VerlError with them if it fails or times out."""
    last: collections.deque[str] = collections.deque(maxlen=tail)
    env = {**os.environ, **command.env}
    try:
        proc = subprocess.Popen(
            list(command.argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
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


@dataclass(frozen=True)
class VerlResult:
    checkpoint_dir: Path  # global_step_N
    merged_dir: Path | None  # model merger's target_dir
    adapter_dir: Path | None  # merged_dir/lora_adapter, repaired and validated
    repairs: tuple[str, ...]  # what repair_adapter changed in verl's export
    adapter: Any  # coop_dag.adapters.AdapterInfo | None
    log_tail: tuple[str, ...]


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
) -> VerlResult:
    """Train with verl, export the LoRA adapter and make it servable.

    1. `train_command` (torchrun -m verl.trainer.sft_trainer), logs streamed to `on_log`;
    2. `merge_command` on the latest `global_step_N` into `merged_dir`
       (default ``<output_dir>/merged``);
    3. `repair_adapter` (task_type, lora_alpha from the config, base model) and
       `validate_adapter` on ``<merged_dir>/lora_adapter``.
    Any failing step raises VerlError carrying the last lines of its output.
    """
    from coop_dag.adapters import AdapterError, repair_adapter, validate_adapter

    cfg.validate()
    log = on_log or (lambda _line: None)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    train = train_command(cfg, launcher)
    log(f"[coop-dag] verl train ({launcher.describe()}): {train.shell()}")
    lines = run_command(
        train, what="verl sft_trainer", on_log=log, timeout=timeout, tail=tail,
        docker=launcher.docker,
    )  # fmt: skip
    ckpt = latest_checkpoint(cfg.output_dir)
    log(f"[coop-dag] verl checkpoint: {ckpt}")
    if not merge:
        return VerlResult(ckpt, None, None, (), None, tuple(lines))

    target = Path(merged_dir) if merged_dir is not None else Path(cfg.output_dir) / "merged"
    target.mkdir(parents=True, exist_ok=True)
    merge_cmd = merge_command(ckpt, target, launcher)
    log(f"[coop-dag] verl merge: {merge_cmd.shell()}")
    lines = run_command(
        merge_cmd, what="verl model_merger", on_log=log, timeout=merge_timeout, tail=tail,
        docker=launcher.docker,
    )  # fmt: skip
    adapter_dir = target / ADAPTER_SUBDIR
    if not adapter_dir.is_dir():
        raise VerlError(
            f"verl model_merger wrote no {ADAPTER_SUBDIR}/ under {target} (was the model "
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
    return VerlResult(ckpt, target, adapter_dir, tuple(repairs), info, tuple(lines))
