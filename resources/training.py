"""Where LoRA training runs, where finished adapters land, and the probe's size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from coop_dag import REPO_ROOT
from coop_dag.config.hostcheck import check_trainer
from coop_dag.config.profiles import (
    CLUSTER_VERL_PYTHON,
    TRAINERS,
    VERL_KINDS,
    ProfileError,
    TrainerChoice,
    local_verl_python,
    resolve_profile,
)

if TYPE_CHECKING:
    from coop_dag.training.verl_launch import VerlLauncher


class TrainingResource(dg.ConfigurableResource):
    """LoRA training settings. Empty fields come from the profile (``COOP_DAG_PROFILE`` and
    the ``COOP_DAG_*`` overrides), read when a run uses the resource.

    - ``adapters_dir``: finished adapters, ``<adapters_dir>/<variant>/student-<sha12>/``
      (empty: ``$COOP_DAG_ADAPTERS_DIR`` or ``<repo>/runs/adapters``); the directory the
      new-adapter sensor watches, so only complete adapters ever appear there.
    - ``work_dir``: checkpoints and prepared rows, ``<work_dir>/<variant>/<run_key>/`` (empty:
      ``$COOP_DAG_TRAIN_DIR`` or ``<repo>/runs/train``); a rerun resumes from here.
    - ``recipe``: override the variant's recipe name (empty: the variant's).
    - ``force``: retrain even when the same run (student, data, recipe) already finished.
    - probe: ``probe_prompts`` validation-repository first turns, ``probe_max_new_tokens`` each
      (the rollouts' per-turn cap), generated greedily by the serving engine (vLLM).
    - ``threads``: torch threads (0: the cores no other process is using).
    - the trainer: ``kind`` (embedded | verl | verl-cpu), for verl ``verl_python`` or
      ``verl_image`` and ``nproc`` (verl-cpu: ``verl_python``, default the venv of
      ``scripts/verl_venv.sh``; one CPU process); `trainer_choice()` resolves them against
      the profile and `verl_launcher()` builds the `coop_dag.training.verl_launch.VerlLauncher`.
      ``lora_checkpoint`` trains with whichever `trainer_choice()` names: the embedded CPU
      trainer in process, or verl as an external process (`coop_dag.training.verl.train_lora_verl`,
      run dir ``<work_dir>/<variant>/verl-<key>/``).
    """

    adapters_dir: str = ""
    work_dir: str = ""
    recipe: str = ""
    force: bool = False
    probe_prompts: int = 8
    probe_max_new_tokens: int = 256
    threads: int = 0
    kind: str = Field(
        default="", description="embedded | verl | verl-cpu; empty: the profile's"
    )
    verl_python: str = Field(default="", description="python of verl's own environment")
    verl_image: str = Field(default="", description="container image with verl")
    nproc: int = Field(default=0, description="GPUs per verl run (torchrun); 0: the profile's")
    container_python: str = Field(
        default="python", description="python inside verl_image (runs the model merger)"
    )
    container_torchrun: str = Field(default="torchrun", description="torchrun inside verl_image")
    check_gpus: bool = Field(
        default=True,
        description="verl (GPU): check the host's GPUs before training; off only for a "
        "stand-in verl that runs on the CPU (tests)",
    )
    project_on_pythonpath: bool = Field(
        default=True,
        description="put this source checkout on verl's PYTHONPATH (pkg://coop_dag...)",
    )

    @property
    def adapters_root(self) -> Path:
        return Path(self.adapters_dir) if self.adapters_dir else resolve_profile().adapters_dir

    @property
    def work_root(self) -> Path:
        value = self.work_dir or os.environ.get("COOP_DAG_TRAIN_DIR")
        return Path(value) if value else resolve_profile().runs_dir / "train"

    def adapter_dir(self, variant: str, name: str) -> Path:
        return self.adapters_root / variant / name

    def run_root(self, variant: str) -> Path:
        return self.work_root / variant

    # -- the trainer --------------------------------------------------------------------
    def trainer_choice(self) -> TrainerChoice:
        """The trainer: fields set here beat the profile's."""
        profile = resolve_profile()
        kind = self.kind or profile.trainer.kind
        if kind not in TRAINERS:
            raise ProfileError(f"TrainingResource.kind={kind!r}: expected one of {TRAINERS}")
        nproc = self.nproc or profile.trainer.nproc
        if kind == "embedded":
            return TrainerChoice("embedded", nproc=nproc)
        if kind == "verl-cpu":
            if self.verl_image:
                raise ProfileError("TrainingResource: verl-cpu runs from verl_python, not an image")
            python = self.verl_python or (
                profile.trainer.verl_python
                if profile.trainer.kind == "verl-cpu"
                else local_verl_python()
            )
            return TrainerChoice("verl-cpu", python, None, 1)
        if self.verl_python and self.verl_image:
            raise ProfileError("TrainingResource: set verl_python or verl_image, not both")
        python, image = self.verl_python or None, self.verl_image or None
        if not (python or image):
            if profile.trainer.kind == "verl":
                python, image = profile.trainer.verl_python, profile.trainer.verl_image
            else:
                python = CLUSTER_VERL_PYTHON
        return TrainerChoice("verl", python, image, nproc)

    def check_host(self) -> None:
        """The GPUs (and Docker, for an image) the trainer needs, before anything starts:
        `coop_dag.config.hostcheck.HostRequirementError` naming what is missing and the variable."""
        if self.check_gpus:
            check_trainer(self.trainer_choice())

    def verl_launcher(self) -> VerlLauncher:
        """Where verl runs (its python, or its image); an error when the trainer is not verl."""
        from coop_dag.training.verl_launch import VerlLauncher

        choice = self.trainer_choice()
        if choice.kind not in VERL_KINDS:
            raise ProfileError("TrainingResource.verl_launcher(): the trainer is not verl")
        on_path = self.project_on_pythonpath and (REPO_ROOT / "pyproject.toml").is_file()
        return VerlLauncher(
            python=choice.verl_python,
            image=choice.verl_image,
            container_python=self.container_python,
            container_torchrun=self.container_torchrun,
            pythonpath=(str(REPO_ROOT),) if on_path else (),
        )
