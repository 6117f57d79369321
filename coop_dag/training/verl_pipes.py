"""verl's SFT trainer with rank 0 reporting to Dagster through Pipes: the training entry.

Runs in verl's own environment (``scripts/verl_venv.sh``, the GPU image), never in the core
venv, and imports neither Dagster nor verl at module level (`coop_dag.training.verl` builds the
commands; the fake verl of the tests imports `Reporter` from here). Two command lines:

- ``torchrun ... -m coop_dag.training.verl_pipes [--export-to DIR] <hydra overrides>``: verl 0.9.1's
  ``verl.trainer.sft_trainer`` main, run in process with its own Hydra config and overrides
  (the same CLI as ``-m verl.trainer.sft_trainer``). Its ``SFTTrainer`` and ``Tracking`` are
  subclassed so that rank 0 (verl's logging rank) hands every metrics record of verl's own
  step loop -- ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/global_tokens``,
  ``val/loss`` -- plus the wall time of the step's ``train_batch`` call to a `Reporter`.
  With ``--export-to``, rank 0 then exports the checkpoint verl saved last (its tracker file)
  with verl's model merger, in process (``DIR/lora_adapter``), and reports the result.
- ``python -m coop_dag.training.verl_pipes --export-only CKPT --export-to DIR``: the export
  alone, for a run whose final checkpoint exists (killed after its last save).

The `Reporter` appends each record to ``<trainer.default_local_dir>/coop_dag_verl_metrics.jsonl``
(`METRICS_FILE`, read by `training.verl.metrics_from_file`: the run's loss curve, whole across
a run killed and resumed) and, when the process was launched through Dagster Pipes (the
``DAGSTER_PIPES_CONTEXT``/``DAGSTER_PIPES_MESSAGES`` variables are set, which
``lora_checkpoint`` does), streams them through ``dagster_pipes``: a log line per step
(step/total, loss, lr, step time) and, after the export, one ``report_asset_materialization``
with the loss curve and the exported adapter's path. Without those variables nothing is
imported from ``dagster_pipes`` and the entry behaves as verl's own trainer (and merger).

Resume: verl's ``trainer.resume_mode=auto`` loads the newest checkpoint named by its tracker
(model, optimizer, scheduler, dataloader position); the start record names the step resumed
from, and the steps trained again after it replace the killed attempt's. A checkpoint taken
at the end of an epoch holds an exhausted loader, with which verl 0.9.1 would skip the next
epoch (and never reach its last step): the entry gives that resume a fresh loader.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "PIPES_ENV", "Reporter", "export_adapter", "main", "read_metrics"]

METRICS_FILE = "coop_dag_verl_metrics.jsonl"  # in trainer.default_local_dir, every attempt
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl.utils.checkpoint's tracker name
ADAPTER_SUBDIR = "lora_adapter"  # where verl's merger writes the PEFT adapter
# dagster_pipes' bootstrap variables (PipesEnvVarParamsLoader): set only by a Pipes launch
PIPES_ENV = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")
STEP_TIME_KEY = "coop_dag/step_time_s"  # added to verl's train metrics: its train_batch call


def _is_pipes_process(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(PIPES_ENV[0]))


def _open_pipes() -> Any:
    """The Pipes context when this process was launched through Pipes (`dagster_pipes` keeps
    it as a singleton), else None. An environment without ``dagster-pipes`` (a verl image
    built without it) trains all the same, unreported, with a warning saying so."""
    if not _is_pipes_process():
        return None
    try:
        from dagster_pipes import open_dagster_pipes
    except ImportError:
        print(
            "coop_dag.training.verl_pipes: launched through Dagster Pipes, but dagster-pipes is "
            "not installed in verl's environment (scripts/verl-requirements.txt pins it): training "
            "without reporting to Dagster",
            file=sys.stderr,
            flush=True,
        )
        return None
    return open_dagster_pipes()


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_metrics(output_dir: str | os.PathLike) -> tuple[dict[int, dict[str, float]], int]:
    """Per-step metrics from `METRICS_FILE` (a later attempt's record for a step replaces an
    earlier one's) and the step the last attempt resumed from (0: it started afresh)."""
    steps: dict[int, dict[str, float]] = {}
    resumed = 0
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return steps, resumed
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if not isinstance(record, dict):
                continue
            if record.get("event") == "start":
                resumed = int(record.get("resume_step") or 0)
                # the steps this attempt trains again replace the killed attempt's
                for step in [s for s in steps if s > resumed]:
                    del steps[step]
            elif record.get("event") == "step" and isinstance(record.get("metrics"), dict):
                values = {k: v for k, v in record["metrics"].items() if _finite(v) is not None}
                steps.setdefault(int(record["step"]), {}).update(
                    {k: float(v) for k, v in values.items()}
                )
    return steps, resumed


def loss_curve(steps: Mapping[int, Mapping[str, float]]) -> dict[str, list[dict[str, Any]]]:
    """The train and validation curves of `read_metrics`' steps."""
    train, val = [], []
    for step in sorted(steps):
        m = steps[step]
        if "train/loss" in m:
            train.append(
                {
                    "step": step,
                    "loss": m["train/loss"],
                    "lr": m.get("train/lr"),
                    "step_time_s": m.get(STEP_TIME_KEY),
                }
            )
        if "val/loss" in m:
            val.append({"step": step, "val_loss": m["val/loss"]})
    return {"train": train, "val": val}


class Reporter:
    """Rank 0's channel: `METRICS_FILE`, and Dagster Pipes when launched through it."""

    def __init__(self, output_dir: str | os.PathLike, pipes: Any = None) -> None:
        self.output_dir = Path(output_dir)
        self.pipes = pipes  # a dagster_pipes.PipesContext, or None
        self.total_steps: int | None = None
        self._step_times: list[float] = []

    @classmethod
    def open(cls, output_dir: str | os.PathLike) -> Reporter:
        """A reporter writing to `output_dir`, with the Pipes context when this process was
        launched through Pipes (opened once per process: `dagster_pipes` keeps a singleton)."""
        return cls(output_dir, _open_pipes())

    def _append(self, record: Mapping[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**record, "time": round(time.time(), 3)}) + "\n"
        with (self.output_dir / METRICS_FILE).open("a+b") as fh:
            if fh.tell() > 0:  # a killed attempt may have left half a line: end it first
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode("utf-8"))

    def _log(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)

    def started(self, total_steps: int | None, resume_step: int = 0) -> None:
        self.total_steps = total_steps
        self._append({"event": "start", "total_steps": total_steps, "resume_step": resume_step})
        where = f"resuming from step {resume_step}" if resume_step else "from step 0"
        self._log(f"verl sft_trainer: {total_steps} steps, {where}")

    def step(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = {k: _finite(v) for k, v in metrics.items()}
        values = {k: v for k, v in values.items() if v is not None}
        self._append({"event": "step", "step": int(step), "metrics": values})
        if STEP_TIME_KEY in values:
            self._step_times.append(values[STEP_TIME_KEY])
        parts = []
        if "train/loss" in values:
            parts.append(f"loss {values['train/loss']:.4f}")
        if "train/lr" in values:
            parts.append(f"lr {values['train/lr']:.3g}")
        if STEP_TIME_KEY in values:
            parts.append(f"{values[STEP_TIME_KEY]:.2f} s")
        if "train/grad_norm" in values:
            parts.append(f"grad_norm {values['train/grad_norm']:.3g}")
        if "val/loss" in values:
            parts.append(f"val_loss {values['val/loss']:.4f}")
        of = f"/{self.total_steps}" if self.total_steps else ""
        self._log(f"verl step {step}{of}: " + ", ".join(parts))

    def exported(self, checkpoint: str | os.PathLike, adapter_dir: str | os.PathLike) -> dict:
        """After the export: the materialization's metadata (the run's whole loss curve, from
        `METRICS_FILE`, and the adapter's path), reported through Pipes; returned either way."""
        steps, resumed = read_metrics(self.output_dir)
        curve = loss_curve(steps)
        train = curve["train"]
        times = [t["step_time_s"] for t in train if t["step_time_s"] is not None]
        metadata: dict[str, Any] = {
            "verl_adapter_path": {"raw_value": os.fspath(adapter_dir), "type": "path"},
            "verl_checkpoint": {"raw_value": os.fspath(checkpoint), "type": "path"},
            "verl_loss_curve": {"raw_value": curve, "type": "json"},
            "verl_steps": len(train),
            "verl_resumed_from_step": resumed,
        }
        if train:
            metadata["verl_final_loss"] = train[-1]["loss"]
        if curve["val"]:
            metadata["verl_final_val_loss"] = curve["val"][-1]["val_loss"]
        if times:
            metadata["verl_mean_step_time_s"] = round(sum(times) / len(times), 4)
        self._log(f"verl export: {adapter_dir} (from {Path(checkpoint).name})")
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)
        return metadata

    def close(self, exc: BaseException | None = None) -> None:
        """Close the Pipes context (with `exc` as the reason when the process failed)."""
        _close_pipes(self.pipes, exc)


def _close_pipes(pipes: Any, exc: BaseException | None = None) -> None:
    if pipes is None or pipes.is_closed:
        return
    if exc is None:
        pipes.close()
    else:  # the context manager's exit reports the exception to Dagster
        pipes.__exit__(type(exc), exc, exc.__traceback__)


# --------------------------------------------------------------------------- verl hooks

_REPORTER: Reporter | None = None  # rank 0's, once verl's trainer is built
_STEP_TIME: dict[str, float] = {}  # "last": the last train_batch call's wall time


def _install_hooks(output: dict[str, Any]) -> None:
    """Subclass verl's SFTTrainer (its fit: the total and resumed steps, a timed train_batch)
    and Tracking (every metrics record of the step loop) in ``verl.trainer.sft_trainer``,
    whose ``run_sft``/``fit`` look both names up there when they run."""
    from verl.trainer import sft_trainer

    base_trainer, base_tracking = sft_trainer.SFTTrainer, sft_trainer.Tracking

    class ReportingTracking(base_tracking):
        def log(self, data, step, backend=None):
            super().log(data=data, step=step, backend=backend)
            if _REPORTER is not None:
                values = dict(data)
                if "train/loss" in values and "last" in _STEP_TIME:
                    values[STEP_TIME_KEY] = _STEP_TIME["last"]
                _REPORTER.step(step, values)

    class ReportingSFTTrainer(base_trainer):
        def fit(self):
            global _REPORTER
            output["output_dir"] = str(self.config.trainer.default_local_dir)
            resumed = int(self.resume_global_step or 0)
            if resumed and self.steps_per_epoch and resumed % self.steps_per_epoch == 0:
                # verl 0.9.1 restores the loader state saved at the end of an epoch: an
                # exhausted iterator, so the next epoch yields nothing -- an epoch lost, and
                # no final checkpoint. A fresh loader (its sampler re-seeded per epoch by
                # fit's set_epoch) trains that epoch.
                self._build_dataloader()
                self.ckpt_handler.train_dataloader = self.train_dataloader
                if self.rank == 0:
                    print(
                        f"coop_dag.training.verl_pipes: resumed at the end of epoch "
                        f"{resumed // self.steps_per_epoch}: a fresh train loader",
                        flush=True,
                    )
            logging_rank = (
                self.engine.is_mp_src_rank_with_outputs()
                and self.engine.get_data_parallel_rank() == 0
            )
            if logging_rank:
                _REPORTER = output["reporter"] = Reporter(
                    self.config.trainer.default_local_dir, output.get("pipes")
                )
                _REPORTER.started(self.total_training_steps, int(self.resume_global_step or 0))
                client = self.training_client
                train_batch = client.train_batch

                def timed_train_batch(*args, **kwargs):
                    started = time.perf_counter()
                    result = train_batch(*args, **kwargs)
                    _STEP_TIME["last"] = round(time.perf_counter() - started, 4)
                    return result

                client.train_batch = timed_train_batch
            return super().fit()

    sft_trainer.SFTTrainer = ReportingSFTTrainer
    sft_trainer.Tracking = ReportingTracking


def export_adapter(
    checkpoint: str | os.PathLike,
    target_dir: str | os.PathLike,
    *,
    backend: str = "fsdp",
    trust_remote_code: bool = False,
) -> Path:
    """verl's model merger (``python -m verl.model_merger merge --backend fsdp --local_dir
    CKPT --target_dir DIR``), in this process: the PEFT adapter lands in ``DIR/lora_adapter``."""
    from verl.model_merger import __main__ as merger

    argv = [
        "verl.model_merger", "merge", "--backend", backend,
        "--local_dir", os.fspath(checkpoint), "--target_dir", os.fspath(target_dir),
    ]  # fmt: skip
    if trust_remote_code:
        argv.append("--trust-remote-code")
    saved = sys.argv
    sys.argv = argv
    try:
        merger.main()
    finally:
        sys.argv = saved
    adapter = Path(target_dir) / ADAPTER_SUBDIR
    if not adapter.is_dir():
        raise RuntimeError(f"verl's model merger wrote no {ADAPTER_SUBDIR}/ under {target_dir}")
    return adapter


def last_checkpoint(output_dir: str | os.PathLike) -> Path:
    """``global_step_N`` named by verl's tracker in `output_dir` (written once N is saved)."""
    tracker = Path(output_dir) / TRACKER_FILE
    step = tracker.read_text().strip() if tracker.is_file() else ""
    if not step.isdigit() or not (Path(output_dir) / f"global_step_{step}").is_dir():
        raise RuntimeError(f"verl saved no checkpoint in {output_dir} ({TRACKER_FILE}: {step!r})")
    return Path(output_dir) / f"global_step_{step}"


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m coop_dag.training.verl_pipes",
        description="verl's sft_trainer (Hydra overrides follow), reporting through Dagster "
        "Pipes when launched by it; --export-to: then export the last checkpoint's adapter",
    )
    parser.add_argument("--export-to", help="model merger target dir (adapter: DIR/lora_adapter)")
    parser.add_argument("--export-only", metavar="CKPT", help="export CKPT; train nothing")
    parser.add_argument("--backend", default="fsdp", choices=["fsdp", "megatron"])
    parser.add_argument("--trust-remote-code", action="store_true")
    args, overrides = parser.parse_known_args(list(argv))
    if args.export_only and not args.export_to:
        parser.error("--export-only needs --export-to")
    if args.export_only and overrides:
        parser.error(f"--export-only takes no Hydra overrides: {overrides}")
    return args, overrides


def _terminate_as_exit(signum, _frame) -> None:
    # SIGTERM (cancellation: training.verl kills the process group): unwind, so that the Pipes
    # context is closed with the reason instead of vanishing
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    pipes = _open_pipes() if rank == 0 else None
    if pipes is not None:
        signal.signal(signal.SIGTERM, _terminate_as_exit)
    try:
        if args.export_only:
            checkpoint = Path(args.export_only)
            adapter = export_adapter(
                checkpoint, args.export_to, backend=args.backend,
                trust_remote_code=args.trust_remote_code,
            )  # fmt: skip
            Reporter(checkpoint.parent, pipes).exported(checkpoint, adapter)
        else:
            state: dict[str, Any] = {"pipes": pipes}
            _install_hooks(state)
            from verl.trainer import sft_trainer

            sys.argv = [sys.argv[0], *overrides]  # Hydra parses sys.argv
            sft_trainer.main()
            reporter = state.get("reporter")
            if rank == 0 and args.export_to:
                output_dir = state.get("output_dir")
                if output_dir is None:
                    raise RuntimeError("verl's trainer never started fitting: nothing to export")
                reporter = reporter or Reporter(output_dir, pipes)
                checkpoint = last_checkpoint(output_dir)
                adapter = export_adapter(
                    checkpoint, args.export_to, backend=args.backend,
                    trust_remote_code=args.trust_remote_code,
                )  # fmt: skip
                reporter.exported(checkpoint, adapter)
    except BaseException as exc:
        _close_pipes(pipes, exc)
        raise
    _close_pipes(pipes)


if __name__ == "__main__":
    main()
