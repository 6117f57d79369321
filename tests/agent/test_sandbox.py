"""coop_dag.agent.sandbox: the local bubblewrap sandbox (run for real) and the Docker backend
(argv builders asserted in full, the class driven end to end through a fake `docker`)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from coop_dag import BUNDLED_DATASET, PACKAGE_DIR, REPO_ROOT
from coop_dag.agent.sandbox.base import DEFAULT_ENV, CommandResult, SandboxError, format_observation
from coop_dag.agent.sandbox.bwrap import (
    SYSTEM_PATHS,
    bwrap_argv,
    bwrap_status,
    host_secrets,
    interpreter_roots,
    secrets_to_hide,
    system_mounts,
)
from coop_dag.agent.sandbox.docker import (
    DockerSandbox,
    docker_exec_argv,
    docker_rm_argv,
    docker_run_argv,
    image_for,
)
from coop_dag.agent.sandbox.local import LocalSandbox
from coop_dag.dataset.base_repo import checkout_base
from coop_dag.dataset.tasks import Task

BWRAP_OK, BWRAP_INFO = bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unusable: {BWRAP_INFO}")

COOPERBENCH_MIRROR = Path("/work/.mirror/cooperbench+CooperBench/repo")
COOP_YAML = "src/cooperbench/agents/mini_swe_agent_v2/config/coop.yaml"


# --------------------------------------------------------------------------- fixtures


def make_task(root: Path, repo: str = "calc_task", task_id: int = 1) -> Task:
    """A minimal bundled-layout task: just repo/ and runner.sh (no features needed here)."""
    task_dir = root / repo / f"task{task_id}"
    src = task_dir / "repo" / "src" / "calc"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("from calc.core import add\n")
    (src / "core.py").write_text("def add(a, b):\n    return a + b\n")
    (task_dir / "repo" / "tests").mkdir()
    (task_dir / "repo" / "tests" / "test_core.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    )
    (task_dir / "repo" / ".gitignore").write_text("*.log\n")
    (task_dir / "repo" / "notes.log").write_text("tracked although ignored\n")
    shutil.copyfile(PACKAGE_DIR / "bundled" / "runner_template.sh", task_dir / "runner.sh")
    return Task(repo, task_id, task_dir, {})


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return make_task(tmp_path / "dataset")


@pytest.fixture
def sandbox(task: Task, tmp_path: Path):
    with LocalSandbox(task, tmp_path / "sandboxes", timeout=30) as sb:
        yield sb


def git(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def processes_with(token: str) -> list[str]:
    """Host processes whose command line contains `token` (any PID namespace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if token in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


# --------------------------------------------------------------------------- pure functions


def test_bwrap_argv_isolation_flags() -> None:
    argv = bwrap_argv(
        "/srv/ws/repo",
        "echo hi",
        writable=["/srv/ws/home"],
        hidden=["/run"],
        system=["/usr", "/etc/passwd"],
        symlinks=[("usr/bin", "/bin")],
    )
    assert argv == [
        "bwrap",
        # the root is an empty tmpfs: the system, shallowest first, then the fresh mounts
        "--symlink", "usr/bin", "/bin",
        "--ro-bind", "/usr", "/usr",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--tmpfs", "/run",
        "--ro-bind", "/etc/passwd", "/etc/passwd",
        "--bind", "/srv/ws/repo", "/srv/ws/repo",
        "--bind", "/srv/ws/home", "/srv/ws/home",
        "--remount-ro", "/run",
        "--remount-ro", "/",
        "--unshare-net",
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "--chdir", "/srv/ws/repo",
        "--",
        "bash", "-lc", "echo hi",
    ]  # fmt: skip
    assert ("--ro-bind", "/", "/") not in set(zip(argv, argv[1:], argv[2:], strict=False))


def test_bwrap_argv_mount_order_binds_and_chdir() -> None:
    argv = bwrap_argv(
        "/r/agent-a/repo",
        "ls",
        hidden=["/r", "/opt/data/checkout"],
        ro_binds=["/opt/shim", ("/srv/data", "/data"), "/opt/data", "/r/checkout/.venv"],
        system=["/usr"],
        chdir="/r/agent-a/repo/src",
        bwrap="/usr/bin/bwrap",
    )
    assert argv[0] == "/usr/bin/bwrap"
    pos = {tuple(argv[i : i + 3]): i for i in range(len(argv) - 2)}
    usr = pos[("--ro-bind", "/usr", "/usr")]
    tmp = pos[("--tmpfs", "/tmp", "--tmpfs")]
    hide_r = pos[("--tmpfs", "/r", "--ro-bind")]
    shim = pos[("--ro-bind", "/opt/shim", "/opt/shim")]
    data = pos[("--ro-bind", "/srv/data", "/data")]
    opt_data = pos[("--ro-bind", "/opt/data", "/opt/data")]
    hide_checkout = argv.index("/opt/data/checkout") - 1
    venv = pos[("--ro-bind", "/r/checkout/.venv", "/r/checkout/.venv")]
    ws = pos[("--bind", "/r/agent-a/repo", "/r/agent-a/repo")]
    ro_again = argv.index("/r", hide_r + 2) - 1
    # shallowest first, so a deeper mount shows through a shallower one: a venv inside a
    # hidden directory stays visible, a checkout hidden inside a bound directory stays hidden
    assert usr < tmp < hide_r < data < shim < opt_data < hide_checkout < venv < ws < ro_again
    assert argv[hide_checkout] == "--tmpfs" and argv[ro_again] == "--remount-ro"
    assert argv[argv.index("--chdir") + 1] == "/r/agent-a/repo/src"
    assert argv[-4:] == ["--", "bash", "-lc", "ls"]
    # exactly one writable bind: the workspace
    assert argv.count("--bind") == 1


def test_system_mounts_recreate_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    binds, links = system_mounts(
        [str(tmp_path / "usr"), str(tmp_path / "bin"), str(tmp_path / "missing")]
    )
    assert binds == [str(tmp_path / "usr")]
    assert links == [("usr/bin", str(tmp_path / "bin"))]


def test_secrets_inside_a_bound_directory_are_hidden_again(tmp_path: Path) -> None:
    opt, checkout = tmp_path / "opt", tmp_path / "opt" / "src" / "coop-dag"
    assert secrets_to_hide([checkout], [opt]) == [checkout]
    # seen through a (source, dest) bind, it is hidden where it shows
    assert secrets_to_hide([checkout], [(opt, "/mnt/o")]) == [Path("/mnt/o/src/coop-dag")]
    # a venv inside the checkout shows the venv only: the checkout is not inside it
    assert secrets_to_hide([checkout], [checkout / ".venv", "/usr"]) == []
    defaults = host_secrets([tmp_path / "dataset"])
    assert PACKAGE_DIR in defaults and Path.home() in defaults
    assert tmp_path / "dataset" in defaults


def test_interpreter_roots_are_the_venv_and_its_base_not_the_checkout() -> None:
    roots = interpreter_roots(sys.executable)
    assert Path(sys.prefix) in roots
    assert Path(sys.base_prefix) in roots or any(
        p == Path(sys.base_prefix) or p in Path(sys.base_prefix).parents
        for p in (Path("/usr"), *roots)
    )
    for root in roots:
        assert root != Path("/") and root != Path.home()
        assert root not in (REPO_ROOT, *REPO_ROOT.parents)  # never the checkout around a venv
        assert not any(root == Path(s) or Path(s) in root.parents for s in SYSTEM_PATHS)


def test_format_observation_short_and_long() -> None:
    short = format_observation("hello\n", 0)
    assert json.loads(short) == {"returncode": 0, "output": "hello\n"}

    out = "a" * 6000 + "MIDDLE" + "z" * 6000
    long = format_observation(out, 2)
    parsed = json.loads(long)
    assert parsed["returncode"] == 2
    assert parsed["output_head"] == out[:5000]
    assert parsed["output_tail"] == out[-5000:]
    assert parsed["elided_chars"] == len(out) - 10000
    assert parsed["warning"] == "Output too long."
    assert "MIDDLE" not in long and len(long) < 10_300

    # the boundary: CooperBench uses `length < 10000`
    assert "output" in json.loads(format_observation("x" * 9999, 0))
    assert json.loads(format_observation("x" * 10000, 0))["elided_chars"] == 0
    small = json.loads(format_observation("0123456789", 1, limit=4))
    assert (small["output_head"], small["output_tail"], small["elided_chars"]) == ("01", "89", 6)
    exc = json.loads(format_observation("", -1, exception_info="boom"))
    assert exc["exception_info"] == "boom"


@pytest.mark.parametrize(
    "output",
    [
        "",
        "plain\n",
        "<tag> & 'quote' \"dq\" \\ \t ünïcödé ✓\n",
        "x" * 9999,
        "y" * 10000,
        "<&>'" * 4000,
    ],
)
def test_format_observation_matches_cooperbench_template(output: str) -> None:
    """Byte-identical to rendering the coop config's observation_template with Jinja2."""
    jinja2 = pytest.importorskip("jinja2")
    yaml = pytest.importorskip("yaml")
    if not COOPERBENCH_MIRROR.exists():
        pytest.skip("CooperBench mirror not available")
    text = subprocess.run(
        ["git", "-C", str(COOPERBENCH_MIRROR), "show", f"HEAD:{COOP_YAML}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    if not text:
        pytest.skip("coop.yaml not found in the mirror")
    template = yaml.safe_load(text)["model"]["observation_template"]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    for rc, exc in ((0, ""), (137, "boom <x>")):
        expected = env.from_string(template).render(
            output={"output": output, "returncode": rc, "exception_info": exc}
        )
        assert format_observation(output, rc, exception_info=exc or None) == expected


def test_image_for_follows_cooperbench_naming(tmp_path: Path) -> None:
    assert image_for(Task("pallets_click_task", 2068, tmp_path, {})) == (
        "akhatua/cooperbench-pallets-click:task2068"
    )
    assert image_for("dottxt_ai_outlines_task", 1371) == (
        "akhatua/cooperbench-dottxt-ai-outlines:task1371"
    )
    assert image_for("openai_tiktoken_task", 0) == "akhatua/cooperbench-openai-tiktoken:task0"


def test_docker_run_argv() -> None:
    assert docker_run_argv("img:task1", "agent-x") == [
        "docker", "run", "-d", "--name", "agent-x", "-w", "/workspace/repo",
        "--entrypoint", "/bin/bash", "--rm", "img:task1", "-c", "sleep 2h",
    ]  # fmt: skip
    assert docker_run_argv(
        "img:task1",
        "agent-y",
        network="none",
        volumes=[("/host/shim", "/opt/shim", "ro")],
        run_args=[],
        container_timeout="30m",
        executable="podman",
    ) == [
        "podman", "run", "-d", "--name", "agent-y", "-w", "/workspace/repo",
        "--entrypoint", "/bin/bash", "--network", "none", "-v", "/host/shim:/opt/shim:ro",
        "img:task1", "-c", "sleep 30m",
    ]  # fmt: skip


def test_docker_exec_argv() -> None:
    assert docker_exec_argv("c1", "ls -la") == [
        "docker", "exec", "-w", "/workspace/repo", "c1", "bash", "-lc", "ls -la",
    ]  # fmt: skip
    assert docker_exec_argv(
        "c1", "pytest", env={"PAGER": "cat", "A": "b c"}, timeout=30, extra_path=["/opt/shim"]
    ) == [
        "docker", "exec", "-w", "/workspace/repo", "-e", "PAGER=cat", "-e", "A=b c", "c1",
        "timeout", "-s", "KILL", "30", "bash", "-lc", 'export PATH=/opt/shim:"$PATH"\npytest',
    ]  # fmt: skip
    assert docker_exec_argv("c1", "x", timeout=2.5, workdir="/w")[3] == "/w"
    assert "2.5" in docker_exec_argv("c1", "x", timeout=2.5)
    assert docker_rm_argv("c1") == ["docker", "rm", "-f", "c1"]


# --------------------------------------------------------------------------- local sandbox


@needs_bwrap
def test_run_merges_output_and_reports_returncode(sandbox: LocalSandbox) -> None:
    assert sandbox.sandboxed
    r = sandbox.run("pwd; echo out; echo err >&2; exit 3")
    assert isinstance(r, CommandResult)
    assert r.returncode == 3 and not r.timed_out and r.duration > 0
    assert r.output.splitlines() == [sandbox.workdir, "out", "err"]
    # the base commit is checked out, clean, and the interpreter's tools are on PATH
    r = sandbox.run(
        "git rev-parse HEAD; git status --porcelain; PYTHONPATH=src python -m pytest -q tests"
    )
    assert r.output.splitlines()[0] == sandbox.base_sha
    assert "1 passed" in r.output and r.returncode == 0


@needs_bwrap
def test_each_command_is_a_fresh_subshell(sandbox: LocalSandbox) -> None:
    sandbox.run("cd /; export LEAK=1")
    r = sandbox.run('pwd; echo "leak=${LEAK:-unset}"')
    assert r.output == f"{sandbox.workdir}\nleak=unset\n"
    # background jobs end with the command that started them (its PID namespace goes away)
    token = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 10**3}"
    r, obs = sandbox.observe(f"sleep {token} & echo started")
    assert r.returncode == 0 and r.duration < 10
    assert json.loads(obs) == {"returncode": 0, "output": "started\n"}
    time.sleep(0.5)
    assert processes_with(f"sleep {token}") == []


@needs_bwrap
def test_login_shell_keeps_sandbox_path_and_env(task: Task, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-host-key")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "send_message").write_text('#!/bin/bash\necho "shim to $1 via $COOP_MSG_URL"\n')
    (shim / "send_message").chmod(0o755)
    with LocalSandbox(
        task, tmp_path / "sb", env={"COOP_MSG_URL": "unix:///x.sock"}, extra_path=shim
    ) as sb:
        r = sb.run(
            "send_message agent2; echo key=${OPENAI_API_KEY:-none}; echo $PAGER; "
            "command -v python; git config user.name"
        )
        lines = r.output.splitlines()
        assert lines[0] == "shim to agent2 via unix:///x.sock"
        assert lines[1] == "key=none"  # nothing leaks from the host environment
        assert lines[2] == DEFAULT_ENV["PAGER"]
        assert lines[3] == str(Path(sys.executable).parent / "python")
        assert lines[4] == "coop-dag agent"
        assert sb.env["PATH"].split(os.pathsep)[0] == str(shim.resolve())


@needs_bwrap
def test_timeout_kills_the_whole_process_tree(sandbox: LocalSandbox) -> None:
    token = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 10**4}"
    marker = Path(sandbox.workdir) / "marker"
    cmd = (
        f"echo started; (sleep 2; touch {marker}) & "
        f"setsid sleep {token} & nohup sleep {token} >/dev/null 2>&1 & sleep {token}"
    )
    t0 = time.monotonic()
    r = sandbox.run(cmd, timeout=1)
    assert time.monotonic() - t0 < 10
    assert r.timed_out and r.returncode == -1
    assert r.output.startswith("started\n")
    assert "timed out after 1 seconds" in r.output
    obs = json.loads(r.observation())
    assert obs["returncode"] == -1 and "timed out" in obs["output"]
    time.sleep(2.5)
    assert not marker.exists(), "a background child survived the timeout"
    assert processes_with(f"sleep {token}") == []


@needs_bwrap
def test_writes_outside_the_workspace_fail(sandbox: LocalSandbox, tmp_path: Path) -> None:
    probe = f"coop-dag-probe-{uuid.uuid4().hex}"
    outside = Path(sandbox.workdir).parent  # the agent's own sandbox dir, not its repo
    targets = [
        f"/etc/{probe}",
        f"/usr/{probe}",
        str(outside / probe),
        str(Path.home() / probe),
    ]  # not cwd: a clone may live under /tmp, private inside
    for target in targets:
        r = sandbox.run(f"echo x > {target}")
        assert r.returncode != 0, target
        assert "Read-only file system" in r.output or "No such file" in r.output
        assert not Path(target).exists()
    # /tmp is writable but private to the command
    r = sandbox.run(f"echo x > /tmp/{probe} && cat /tmp/{probe}")
    assert r.returncode == 0 and r.output == "x\n"
    assert not Path(f"/tmp/{probe}").exists()
    assert sandbox.run(f"cat /tmp/{probe}").returncode != 0
    # the workspace itself is writable
    assert sandbox.run("echo ok > inside.txt").returncode == 0
    assert (Path(sandbox.workdir) / "inside.txt").read_text() == "ok\n"


@needs_bwrap
def test_network_is_unreachable(sandbox: LocalSandbox) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        # reachable from the host ...
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        conn, _ = server.accept()
        conn.close()
        # ... but not from inside the sandbox
        code = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "print('CONNECTED')\n"
        )
        r = sandbox.run(f"python -c {shlex.quote(code)}")
        assert r.returncode != 0
        assert "CONNECTED" not in r.output
        assert "Error" in r.output
        r = sandbox.run("python -c \"import socket; socket.create_connection(('1.1.1.1', 53), 3)\"")
        assert r.returncode != 0
    finally:
        server.close()


@needs_bwrap
def test_a_bound_unix_socket_is_the_way_out(task: Task, tmp_path: Path) -> None:
    """With no network, a messaging shim reaches the host through a unix socket whose
    directory is passed in `rw_binds` (e.g. an embedded Redis server's unixsocket)."""
    sock_dir = tmp_path / "msg"
    sock_dir.mkdir()
    path = str(sock_dir / "bus.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(20)
    code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); s.send(b'hi')"
    try:
        with LocalSandbox(task, tmp_path / "sb") as closed:
            assert closed.run(f"python -c {shlex.quote(code)}").returncode != 0
        with LocalSandbox(task, tmp_path / "sb", rw_binds=[sock_dir]) as sb:
            r = sb.run(f"python -c {shlex.quote(code)}")
            assert r.returncode == 0, r.output
            conn, _ = server.accept()
            assert conn.recv(2) == b"hi"
            conn.close()
    finally:
        server.close()


@needs_bwrap
def test_agents_cannot_see_each_other(task: Task, tmp_path: Path) -> None:
    root = tmp_path / "shared-root"
    with (
        LocalSandbox(task, root, prefix="agent1-") as a,
        LocalSandbox(task, root, prefix="agent2-") as b,
    ):
        assert Path(a.workdir).parent.parent == Path(b.workdir).parent.parent == root.resolve()
        (Path(b.workdir) / "secret.txt").write_text("b's work\n")
        r = a.run(f"ls {b.workdir}; cat {b.workdir}/secret.txt; ls {root}")
        assert "b's work" not in r.output
        assert "No such file or directory" in r.output
        assert Path(b.workdir).parent.name not in r.output.replace(b.workdir, "")
        r = a.run(f"mkdir -p {b.workdir} && echo pwned > {b.workdir}/secret.txt")
        assert (Path(b.workdir) / "secret.txt").read_text() == "b's work\n"
        # and the other way round
        assert b.run(f"test -e {a.workdir}").returncode != 0


def _unreadable(sb: LocalSandbox, path: Path | str) -> None:
    """`path` exists on the host but the sandbox can neither read nor list it."""
    assert Path(path).exists(), path
    r = sb.run(f"cat {shlex.quote(str(path))} || ls -A {shlex.quote(str(path))}")
    assert r.returncode != 0, f"{path} is visible inside the sandbox:\n{r.output[:500]}"
    assert "No such file or directory" in r.output


@pytest.fixture
def other_run(tmp_path: Path):
    """Another pair's rollout logs in a run directory outside /tmp (private inside anyway)."""
    root = Path(tempfile.mkdtemp(prefix="coop-dag-test-run-", dir="/var/tmp"))
    pair = root / "coop" / "calc_task" / "1" / "f1_f2"
    pair.mkdir(parents=True)
    (pair / "agent1_traj.json").write_text('{"messages": ["the answer"]}\n')
    yield pair
    shutil.rmtree(root, ignore_errors=True)


@needs_bwrap
def test_sandbox_shows_only_the_workspace_and_the_system(tmp_path: Path, other_run: Path) -> None:
    """The answer key stays out of reach: the task's gold patch and tests, the project
    checkout, another pair's run directory and $HOME are unreadable by absolute path, while
    normal work (git, pytest on the workspace, sed/grep/cat inside it) still works."""
    from coop_dag.dataset.discovery import discover_tasks

    task = discover_tasks(BUNDLED_DATASET)[0]
    feature = next(iter(task.features.values()))
    with LocalSandbox(task, tmp_path / "sb", timeout=60) as sb:
        for path in (
            feature.dir / "feature.patch",
            feature.tests_patch,
            task.dir,
            BUNDLED_DATASET,
            REPO_ROOT / "pyproject.toml",
            REPO_ROOT / "coop_dag",
            other_run / "agent1_traj.json",
            other_run,
        ):
            _unreadable(sb, path)
        # the checkout itself: at most the interpreter's venv shows inside it
        r = sb.run(f"ls -A {REPO_ROOT}")
        shown = set(r.output.split()) if r.returncode == 0 else set()
        assert shown <= {".venv"}, shown
        # $HOME: at most the path down to the interpreter (pyenv, uv) shows
        home = Path.home()
        allowed = {
            root.relative_to(home).parts[0]
            for root in interpreter_roots(sys.executable)
            if home in root.parents
        }
        r = sb.run(f"ls -A {home}")
        assert (set(r.output.split()) if r.returncode == 0 else set()) <= allowed
        # normal work
        r = sb.run(
            "set -e; git status --short; git log --oneline | wc -l; "
            "grep -rln 'def ' src | head -1; cat README.md >/dev/null; "
            "sed -i 's/^/# /' README.md && head -c 2 README.md; echo; "
            "python -c 'import sys; print(sys.prefix)'; "
            "PYTHONPATH=src python -m pytest -q -p no:cacheprovider tests 2>&1 | tail -1"
        )
        assert r.returncode == 0, r.output
        lines = r.output.splitlines()
        assert lines[0] == "1" and lines[1].startswith("src/") and lines[2] == "# "
        assert lines[3] == sys.prefix
        assert "passed" in lines[-1], r.output
        assert "README.md" in sb.diff()


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with (mtime, size) for files (directories: path only)."""
    out = {}
    for path in root.rglob("*"):
        st = path.lstat()
        stamp = (st.st_mtime_ns, st.st_size) if path.is_file() else (0, 0)
        out[str(path.relative_to(root))] = stamp
    return out


@needs_bwrap
def test_read_only_commands_create_no_files(sandbox: LocalSandbox) -> None:
    """Looking around (cat, ls, grep, find, git status/diff/log, python -c) leaves the
    workspace, the sandbox home and the sandboxes' root exactly as they were."""
    root = Path(sandbox.workdir).parent.parent
    before = _files(root)
    for command in (
        "cat src/calc/core.py",
        "ls -la . ~",
        "grep -rn add src",
        "find . -name '*.py'",
        "head -n 2 tests/test_core.py; wc -l src/calc/core.py; sed -n 1p src/calc/core.py",
        "git status; git diff; git log --oneline; git show --stat HEAD",
        "python -c 'import calc' 2>/dev/null; PYTHONPATH=src python -c 'import calc.core'",
    ):
        assert sandbox.run(command).returncode == 0, command
        assert _files(root) == before, command
    sandbox.diff()
    # diff() re-hashes a racily clean file (mtime == the index's) and git then freshens the
    # mtime of its existing loose object: no file is created or changed, only that stamp.
    assert {k: size for k, (_, size) in _files(root).items()} == {
        k: size for k, (_, size) in before.items()
    }


@needs_bwrap
def test_a_venv_inside_the_checkout_shows_without_the_checkout(task: Task) -> None:
    """Wherever the project checkout lives (here outside /tmp), with the run's interpreter in
    a venv inside it: the venv runs, nothing else of the checkout is readable."""
    base = Path(tempfile.mkdtemp(prefix="coop-dag-test-checkout-", dir="/var/tmp"))
    try:
        checkout = base / "coop-dag"
        (checkout / "runs" / "coop").mkdir(parents=True)
        (checkout / "runs" / "coop" / "traj.json").write_text("{}\n")
        (checkout / "secret.patch").write_text("+gold\n")
        subprocess.run(
            [sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", checkout / ".venv"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        python = checkout / ".venv" / "bin" / "python"
        with LocalSandbox(task, base / "sandboxes", python=python, timeout=60) as sb:
            r = sb.run("command -v python; python -c 'import sys; print(sys.prefix)'")
            assert r.returncode == 0, r.output
            assert r.output.splitlines() == [str(python), str(checkout / ".venv")]
            _unreadable(sb, checkout / "secret.patch")
            _unreadable(sb, checkout / "runs")
            assert sb.run(f"ls -A {checkout}").output.split() == [".venv"]
            assert sb.run(f"touch {checkout}/.venv/x").returncode != 0  # read-only
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_bwrap
def test_a_bind_never_reveals_the_dataset_or_other_workspaces(task: Task, tmp_path: Path) -> None:
    """A read-only bind of a directory that contains the dataset and the sandboxes' root
    shows the rest of that directory, not them."""
    (tmp_path / "shared.txt").write_text("shared\n")
    root = tmp_path / "sandboxes"
    with (
        LocalSandbox(task, root, prefix="agent1-", ro_binds=[tmp_path]) as a,
        LocalSandbox(task, root, prefix="agent2-") as b,
    ):
        assert a.run(f"cat {tmp_path}/shared.txt").output == "shared\n"
        _unreadable(a, task.runner)
        _unreadable(a, Path(b.workdir) / "src")
        assert a.run("git status --short").returncode == 0


@needs_bwrap
def test_diff_covers_committed_staged_unstaged_and_untracked(
    sandbox: LocalSandbox, task: Task, tmp_path: Path
) -> None:
    ws = Path(sandbox.workdir)
    script = textwrap.dedent(
        """\
        set -e
        echo '# committed' >> src/calc/core.py && git commit -qam 'agent commit'
        echo 'STAGED = 1' > src/calc/staged.py && git add src/calc/staged.py
        echo '# unstaged' >> src/calc/__init__.py
        mkdir -p src/calc/sub && echo 'NEW = 2' > src/calc/sub/untracked.py
        git rm -q tests/test_core.py
        echo 'x' > ignored.log
        echo 'diff --git a/x b/x' > patch.txt
        mkdir -p src/calc/__pycache__ && echo junk > src/calc/__pycache__/core.cpython-311.pyc
        """
    )
    r = sandbox.run(script)
    assert r.returncode == 0, r.output
    index_before = (ws / ".git" / "index").read_bytes()
    status_before = git(ws, "status", "--porcelain")

    patch = sandbox.diff()

    assert (ws / ".git" / "index").read_bytes() == index_before
    assert git(ws, "status", "--porcelain") == status_before
    files = sorted(
        line.split(" b/")[-1] for line in patch.splitlines() if line.startswith("diff --git")
    )
    assert files == [
        "src/calc/__init__.py",  # unstaged
        "src/calc/core.py",  # committed
        "src/calc/staged.py",  # staged
        "src/calc/sub/untracked.py",  # untracked
        "tests/test_core.py",  # deleted
    ]
    assert "ignored.log" not in patch and "patch.txt" not in patch
    assert "__pycache__" not in patch

    # the patch reproduces the agent's tree on a fresh base checkout
    fresh = tmp_path / "fresh"
    checkout_base(task, fresh)
    (tmp_path / "agent.patch").write_text(patch)
    git(fresh, "apply", str(tmp_path / "agent.patch"))
    for rel in ("src/calc/core.py", "src/calc/__init__.py", "src/calc/sub/untracked.py"):
        assert (fresh / rel).read_text() == (ws / rel).read_text()
    assert not (fresh / "tests" / "test_core.py").exists()
    assert (fresh / "notes.log").exists()  # tracked-but-ignored base file not "deleted"


@needs_bwrap
def test_diff_of_untouched_checkout_is_empty(sandbox: LocalSandbox) -> None:
    assert sandbox.diff() == ""
    assert sandbox.run("rm -rf .git").returncode == 0
    with pytest.raises(SandboxError, match="cannot compute the diff"):
        sandbox.diff()


@needs_bwrap
def test_long_output_is_capped_in_observation_and_memory(task: Task, tmp_path: Path) -> None:
    with LocalSandbox(task, tmp_path / "sb", max_output_bytes=100_000) as sb:
        r = sb.run("python -c \"print('h' * 20000 + 't' * 20000)\"")
        assert len(r.output) == 40001
        obs = json.loads(r.observation())
        assert obs["output_head"] == "h" * 5000
        assert obs["output_tail"] == "t" * 4999 + "\n"
        assert obs["elided_chars"] == 30001
        r = sb.run("yes | head -c 5000000")
        assert r.returncode == 0
        assert len(r.output) < 110_000
        assert "bytes of output dropped" in r.output
        assert r.output.startswith("y\n") and r.output.endswith("y\n")


@needs_bwrap
def test_close_removes_the_workspace(task: Task, tmp_path: Path) -> None:
    sb = LocalSandbox(task, tmp_path / "sb")
    ws = Path(sb.workdir)
    assert ws.is_dir()
    sb.close()
    sb.close()  # idempotent
    assert not ws.parent.exists()
    with pytest.raises(SandboxError, match="closed"):
        sb.run("true")
    with LocalSandbox(task, tmp_path / "sb", keep=True) as kept:
        pass
    assert Path(kept.workdir).is_dir()


def test_missing_bwrap_is_an_error_unless_allowed(task: Task, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not found.*allow_unsandboxed"):
        LocalSandbox(task, tmp_path / "sb", bwrap="no-such-bwrap-binary")
    assert list((tmp_path / "sb").iterdir()) == []  # nothing left behind

    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        sb = LocalSandbox(
            task, tmp_path / "sb", bwrap="no-such-bwrap-binary", allow_unsandboxed=True
        )
    with sb:
        assert not sb.sandboxed
        assert sb.argv("echo hi") == ["bash", "-lc", "echo hi"]
        r = sb.run("pwd; echo $PAGER; command -v python")
        assert r.output.splitlines() == [
            sb.workdir,
            "cat",
            str(Path(sys.executable).parent / "python"),
        ]
        # timeouts still kill the process group
        marker = Path(sb.workdir) / "marker"
        r = sb.run(f"(sleep 2; touch {marker}) & sleep 60", timeout=1)
        assert r.timed_out and "timed out" in r.output
        time.sleep(2.5)
        assert not marker.exists()
        sb.run("echo hi > x")
        assert "x" in sb.diff()
        # a daemon that escapes the process group and keeps the pipe open cannot hang run()
        token = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 10**3}"
        try:
            r = sb.run(f"setsid sleep {token} & echo done", timeout=30)
            assert r.output == "done\n" and not r.timed_out and r.duration < 15
        finally:
            for line in processes_with(f"sleep {token}"):
                try:
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


# --------------------------------------------------------------------------- docker backend

FAKE_DOCKER = r'''#!{python}
"""A stand-in for the docker CLI: `run` hands out a container id, `exec` runs the command
locally with /workspace/repo mapped to $FAKE_DOCKER_REPO, `rm` forgets it; all logged."""
import json, os, subprocess, sys
state = os.environ["FAKE_DOCKER_STATE"]
with open(os.path.join(state, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "run":
    print("f00dcafe" * 8)
    sys.exit(0)
if cmd == "rm":
    sys.exit(0)
assert cmd == "exec", cmd
env = dict(os.environ)
workdir = None
while args[0].startswith("-"):
    flag, value, args = args[0], args[1], args[2:]
    if flag == "-w":
        workdir = value
    elif flag == "-e":
        key, _, val = value.partition("=")
        env[key] = val
assert args[0] == "f00dcafe" * 8, args
cwd = workdir.replace("/workspace/repo", os.environ["FAKE_DOCKER_REPO"])
proc = subprocess.run(args[1:], cwd=cwd, env=env)
sys.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)
'''


def test_docker_sandbox_end_to_end_with_a_fake_docker(
    task: Task, tmp_path: Path, monkeypatch
) -> None:
    state = tmp_path / "docker-state"
    state.mkdir()
    repo = tmp_path / "container-repo"
    base = checkout_base(task, repo)
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(FAKE_DOCKER.replace("{python}", sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    monkeypatch.setenv("FAKE_DOCKER_REPO", str(repo))

    with DockerSandbox(
        task, container_name="agent1-test", executable=str(fake), timeout=20, env={"X": "1"}
    ) as sb:
        assert sb.image == "akhatua/cooperbench-calc:task1"
        assert sb.workdir == "/workspace/repo"
        assert sb.base_sha == base
        r = sb.run("echo $X $PAGER; echo err >&2; exit 4")
        assert (r.output, r.returncode, r.timed_out) == ("1 cat\nerr\n", 4, False)
        sb.run("echo '# edit' >> src/calc/core.py; echo new > added.txt")
        patch = sb.diff()
        assert "+# edit" in patch and "added.txt" in patch
        r = sb.run("sleep 30", timeout=1)
        assert r.timed_out and r.returncode == -1 and "timed out" in r.output

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == docker_run_argv(sb.image, "agent1-test")[1:]
    exec_call = calls[2]
    assert exec_call[:4] == ["exec", "-w", "/workspace/repo", "-e"]
    assert "f00dcafe" * 8 in exec_call and exec_call[-3:-1] == ["bash", "-lc"]
    assert ["timeout", "-s", "KILL", "20"] == exec_call[exec_call.index("timeout") :][:4]
    assert calls[-1] == ["rm", "-f", "agent1-test"]


def test_docker_sandbox_reports_a_failed_start(task: Task, tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Unable to find image' >&2\nexit 125\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxError, match="Unable to find image"):
        DockerSandbox(task, executable=str(fake))
