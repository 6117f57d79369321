"""One verl run in its output dir: its record, its checkpoints, and `run_verl`.

A run's output dir (verl's ``trainer.default_local_dir``) holds verl's ``global_step_N/``
checkpoints and its tracker (`TRACKER_FILE`), plus our `RUN_RECORD` (what the checkpoints
there were trained on: `run_record`) and `DONE_FILE` (verl exited 0). A finished run of the
same record is never trained again (`finished_checkpoint`); a run recorded under a module
path that has since moved is the same run (`MOVED_MODULES`). `run_verl` trains (or reuses),
exports the LoRA adapter with verl's model merger and makes it servable: in 0.9.1 the
export's ``r``, ``lora_alpha`` and ``task_type`` come from the checkpoint's
``lora_train_meta.json`` and are right; ``base_model_name_or_path`` is ``null`` -- the one
field `run_verl` repairs (to ``model.path``). It then validates the export and checks its
rank and alpha are the config's (`coop_dag.training.adapters`). Without that metadata (a
checkpoint from verl < 0.9) the merger falls back to ``lora_alpha: 0`` and no
``task_type``; `repair_adapter` still fixes those, from the config, so such an export is
repaired rather than served as a no-op.

Checked against verl 0.9.1: ``verl/utils/checkpoint/checkpoint_handler.py``
(``default_local_dir/global_step_N``, then ``latest_checkpointed_iteration.txt`` renamed into
place once that checkpoint is saved), ``verl/model_merger/base_model_merger.py``
(``save_lora_adapter`` reads ``lora_train_meta.json``, writes ``<target_dir>/lora_adapter``
with no base model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coop_dag.training.verl_config import DATASET_MODULE, VerlError, VerlSFTConfig
from coop_dag.training.verl_launch import (
    LaunchSession,
    LogFn,
    VerlLauncher,
    check_launcher,
    merge_command,
    run_command,
    train_command,
)
from coop_dag.util.containers import Command
from coop_dag.util.files import atomic_write_json, file_sha256

__all__ = [
    "ADAPTER_SUBDIR",
    "DONE_FILE",
    "MOVED_MODULES",
    "RUN_RECORD",
    "TRACKER_FILE",
    "VerlResult",
    "finished_checkpoint",
    "latest_checkpoint",
    "read_json",
    "run_record",
    "run_verl",
]

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint tracker name
RUN_RECORD = "coop_dag_verl_run.json"  # in output_dir: what the checkpoints there were trained on
DONE_FILE = "coop_dag_verl_done.json"  # in output_dir: verl exited 0; names its final checkpoint
ADAPTER_SUBDIR = "lora_adapter"  # where verl's merger puts the PEFT adapter
PIPES_DIR = "pipes"  # in output_dir: where a session's message file goes (mounted rw)


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


def read_json(path: Path) -> Any:
    """A JSON record of ours (`RUN_RECORD`, `DONE_FILE`, ...); None when missing or unreadable."""
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
        read_json(root / RUN_RECORD), record if record is not None else run_record(cfg)
    ):
        return None
    done = read_json(root / DONE_FILE)
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
    same = _same_record(read_json(root / RUN_RECORD), record)
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
    cfg.validate()
    check_launcher(launcher)
    log = on_log or (lambda _line: None)
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = Path(merged_dir) if merged_dir is not None else root / "merged"
    adapter_dir = target / ADAPTER_SUBDIR
    record = run_record(cfg)
    ckpt = finished_checkpoint(cfg, record) if reuse_finished else None
    reused = ckpt is not None
    if merge:
        target.mkdir(parents=True, exist_ok=True)
        if adapter_dir.exists():  # an earlier attempt's export: only this launch's counts
            shutil.rmtree(adapter_dir)
    launch = _Launch(launcher, log, tail, session)
    if ckpt is not None:
        lines, train_time = _export_finished(
            cfg, ckpt, target if merge else None, launch, merge_timeout
        )
    else:
        ckpt, lines, train_time = _train(cfg, record, target if merge else None, launch, timeout)
    log(f"[coop-dag] verl checkpoint: {ckpt}")
    if not merge:
        return VerlResult(
            ckpt, None, None, (), None, tuple(lines),
            reused_checkpoint=reused, train_time_s=train_time,
        )  # fmt: skip
    repairs, info = _servable_adapter(cfg, target, repair, log, lines)
    return VerlResult(
        ckpt, target, adapter_dir, tuple(repairs), info, tuple(lines),
        reused_checkpoint=reused, train_time_s=train_time,
    )  # fmt: skip


@dataclass(frozen=True)
class _Launch:
    """How `run_verl` runs each verl process: where, logging to what, in which session."""

    launcher: VerlLauncher
    log: LogFn
    tail: int
    session: LaunchSession | None

    def run(
        self, command: Command, *, what: str, cwd: Path, root: Path, timeout: float | None
    ) -> list[str]:
        """`run_command` inside the session (its channel in `root`)."""
        with _launch_session(self.session, root) as session_env:
            return run_command(
                command, what=what, on_log=self.log, timeout=timeout, tail=self.tail,
                cwd=cwd, docker=self.launcher.docker, env=session_env,
            )  # fmt: skip


def _export_finished(
    cfg: VerlSFTConfig,
    ckpt: Path,
    target: Path | None,
    launch: _Launch,
    merge_timeout: float | None,
) -> tuple[list[str], float | None]:
    """A finished run's checkpoint: no training; export it into `target` (None: no export).
    Returns the export's last lines and the recorded training time."""
    root = Path(cfg.output_dir)
    launch.log(f"[coop-dag] verl already finished this run: {ckpt}; not training again")
    train_time: float | None = None
    done = read_json(root / DONE_FILE)
    if isinstance(done, dict) and isinstance(done.get("train_time_s"), int | float):
        train_time = float(done["train_time_s"])
    if target is None:
        return [], train_time
    export = merge_command(ckpt, target, launch.launcher, device=cfg.device)
    launch.log(f"[coop-dag] verl export: {export.shell()}")
    lines = launch.run(export, what="verl export", cwd=target, root=root, timeout=merge_timeout)
    return lines, train_time


def _train(
    cfg: VerlSFTConfig,
    record: Mapping[str, Any],
    target: Path | None,
    launch: _Launch,
    timeout: float | None,
) -> tuple[Path, list[str], float]:
    """Launch verl's training (exporting into `target` unless None) and mark the run done.
    Returns its final checkpoint, its last lines and its training time."""
    import time

    root = Path(cfg.output_dir)
    _start_run(root, record, resume=cfg.resume_mode == "auto")
    train = train_command(cfg, launch.launcher, export_to=target)
    launch.log(f"[coop-dag] verl train ({launch.launcher.describe()}): {train.shell()}")
    started = time.monotonic()
    lines = launch.run(train, what="verl sft_trainer", cwd=root, root=root, timeout=timeout)
    train_time = round(time.monotonic() - started, 2)
    if not (root / TRACKER_FILE).is_file():  # _start_run removed any other launch's
        raise VerlError(
            f"verl sft_trainer exited 0 but saved no checkpoint ({TRACKER_FILE} missing in "
            f"{root}): did its epoch loop end before total_training_steps?\n" + "\n".join(lines)
        )
    ckpt = latest_checkpoint(cfg.output_dir)
    expected = cfg.expected_total_steps()
    if expected is not None and ckpt.name != f"global_step_{expected}":
        launch.log(
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
    return ckpt, lines, train_time


def _servable_adapter(
    cfg: VerlSFTConfig, target: Path, repair: bool, log: LogFn, lines: list[str]
) -> tuple[list[str], Any]:
    """Repair (with `repair`) and validate verl's export under `target`, and check its rank
    and alpha are `cfg`'s; returns the repairs and the `AdapterInfo`."""
    from coop_dag.training.adapters import AdapterError, repair_adapter, validate_adapter

    adapter_dir = target / ADAPTER_SUBDIR
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
    return repairs, info
