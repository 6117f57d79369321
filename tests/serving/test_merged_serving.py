"""Adapters served merged into their base (the CPU default for held-out rollouts): the merged
weights compute what the adapter computes, a real vLLM serving them answers as the LoRA does
on the session's server, and that server is stopped when the rollouts are done."""

from __future__ import annotations

import json

import pytest
import serve_helpers as H
import torch
from test_serving import PROBE, _port

from coop_dag.config.profiles import ProfileError
from coop_dag.serving.greedy import run_probe
from coop_dag.serving.server import _port_open
from coop_dag.serving.settings import ServeSettings
from coop_dag.serving.swap import serve_adapter
from coop_dag.training.adapters import adapter_name, merged_model
from coop_dag.training.student_cache import BUILDS, MANIFEST_NAME


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COOP_DAG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_the_merged_model_computes_what_the_adapter_computes(cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    student = H.student()  # resolved before the cache moves: the base stays where it is
    adapter = H.adapters()["A"]
    merged = merged_model(adapter, student.model_dir)
    assert merged.parent == cache / "merged" / student.model_dir.name
    assert merged.name.startswith(adapter_name(adapter) + "-")
    manifest = json.loads((merged / MANIFEST_NAME).read_text())
    assert manifest["adapter"] == adapter_name(adapter)
    assert manifest["base_model_dir"] == str(student.model_dir)
    assert (merged / "tokenizer.json").read_bytes() == (
        student.model_dir / "tokenizer.json"
    ).read_bytes()

    ids = H.tokenizer()("def add(a, b): return a + b")["input_ids"]
    base = student.load_model()
    with_adapter = PeftModel.from_pretrained(student.load_model(), adapter)
    folded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    want = _logits(with_adapter, ids)
    assert not torch.allclose(_logits(base, ids), want, atol=1e-3)  # the adapter matters
    assert torch.allclose(_logits(folded, ids), want, atol=1e-4)

    built = BUILDS["merged"]
    assert merged_model(adapter, student.model_dir) == merged  # cached, not rebuilt
    assert BUILDS["merged"] == built
    # other weights (or another config) are another merged model
    assert merged_model(H.adapters()["B"], student.model_dir) != merged


def test_adapters_are_merged_where_this_launches_vllm_on_the_cpu():
    python = "/opt/vllm/bin/python"
    assert ServeSettings(vllm_python=python, device="cpu").merges_adapters()
    assert not ServeSettings(vllm_python=python, device="gpu").merges_adapters()
    assert not ServeSettings(url="http://127.0.0.1:9").merges_adapters()
    assert not ServeSettings(vllm_python=python, adapters_as="lora").merges_adapters()
    assert ServeSettings(vllm_python=python, device="gpu", adapters_as="merged").merges_adapters()
    with pytest.raises(ProfileError, match="adapters_as=merged needs a vLLM"):
        ServeSettings(url="http://127.0.0.1:9", adapters_as="merged").merges_adapters()
    with pytest.raises(ProfileError, match="adapters_as='fused'"):
        ServeSettings(vllm_python=python, adapters_as="fused").merges_adapters()
    assert ServeSettings(port=8100).merged_port_or_next() == 8101
    assert ServeSettings(port=8100, merged_port=9000).merged_port_or_next() == 9000


def test_a_merged_adapter_served_by_vllm_answers_as_the_lora_and_is_stopped_after(
    vllm_server, tmp_path
):
    from resources.serving import ServingResource

    adapter = H.adapters()["A"]
    name = adapter_name(adapter)
    lora = serve_adapter(vllm_server.url, adapter, probe=PROBE)
    resource = ServingResource(port=_port(), state_dir=str(tmp_path), cpu_kv_cache_gib=1)
    assert resource.merges_adapters()  # the CPU default
    port = resource.settings().merged_port_or_next()
    with resource.serve_adapter(H.STUDENT, adapter) as (endpoint, served_as):
        assert served_as == "merged"
        assert endpoint.url.endswith(f":{port}") and endpoint.base_model_id == name
        assert not _port_open("127.0.0.1", resource.port)  # the base's server was not needed
        out = run_probe(endpoint.engine, name, PROBE)
    assert out.token_ids == lora.adapter_output.token_ids
    assert not _port_open("127.0.0.1", port)  # nobody else held it: stopped with the rollouts
    H.unload_all(vllm_server)


def test_an_attached_server_gets_the_adapter_as_a_lora(vllm_server):
    adapter = H.adapters()["B"]
    resource = H.serving_resource()
    with resource.serve_adapter(H.STUDENT, adapter) as (endpoint, served_as):
        assert served_as == "lora" and endpoint.url == vllm_server.url
        assert adapter_name(adapter) in endpoint.engine.adapters()
    H.unload_all(vllm_server)
