"""A scripted OpenAI-compatible chat-completions server for tests.

A real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, an ephemeral port, in a
daemon thread) that stands in for a vLLM or cloud endpoint, which cannot run here. It
implements ``POST /v1/chat/completions`` only:

- each request is answered with the next scripted :class:`Reply` (the last one repeats);
- when the request body has ``"return_token_ids": true`` the answer carries vLLM's fields:
  top-level ``prompt_token_ids`` and per-choice ``token_ids``;
- every request is recorded (path, headers, parsed JSON body) in :attr:`requests`;
- :meth:`fail_next` makes the next N requests answer an HTTP error (503 by default);
- :meth:`go_down` / :meth:`come_up` close and reopen the listening socket (same port), so
  clients see "connection refused" in between;
- ``Reply.delay`` holds the answer back to exercise client timeouts.

Usage::

    with OpenAITestServer([Reply(content="hi")]) as server:
        server.base_url  # "http://127.0.0.1:<port>/v1"
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Reply:
    """One scripted assistant answer."""

    content: str | None = "ok"
    # OpenAI-shape tool calls: {"id", "type": "function", "function": {"name", "arguments"}}
    tool_calls: list[dict] | None = None
    # Returned only when the request asks for them (return_token_ids). When None, a
    # deterministic stand-in is derived (prompt: from the request; output: from the text).
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None
    omit_token_ids: bool = False  # behave like an endpoint that ignores return_token_ids
    finish_reason: str | None = None
    model: str | None = None  # echoed request model when None
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    replies: list[Reply] = field(default_factory=list)
    served: int = 0
    fail_remaining: int = 0
    fail_status: int = 503
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _stand_in_prompt_ids(body: dict) -> list[int]:
    text = json.dumps(body.get("messages", []), sort_keys=True)
    return [b for b in text.encode()[:64]]


def _stand_in_output_ids(reply: Reply) -> list[int]:
    text = (reply.content or "") + json.dumps(reply.tool_calls or [])
    return [1000 + b for b in text.encode()[:64]]


class _Handler(BaseHTTPRequestHandler):
    server_version = "OpenAITestServer/1"
    # HTTP/1.0: one request per connection, so no kept-alive connection outlives go_down().
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined]

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
            )
        else:
            self._send_json(
                404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
            )

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode(errors="replace")}
        st = self.state
        with st.lock:
            st.requests.append(RecordedRequest(self.path, dict(self.headers.items()), body))
            failing = st.fail_remaining > 0
            if failing:
                st.fail_remaining -= 1
                status = st.fail_status
            reply = None
            if not failing and st.replies:
                reply = st.replies[min(st.served, len(st.replies) - 1)]
                st.served += 1
        if self.path.rstrip("/") != CHAT_PATH:
            self._send_json(
                404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
            )
            return
        if failing:
            self._send_json(
                status,
                {"error": {"message": "scripted failure", "type": "server_error", "code": status}},
            )
            return
        reply = reply or Reply()
        if reply.delay:
            time.sleep(reply.delay)
        self._send_json(200, self._completion(body, reply))

    def _completion(self, body: dict, reply: Reply) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        prompt_ids = reply.prompt_token_ids or _stand_in_prompt_ids(body)
        output_ids = reply.output_token_ids or _stand_in_output_ids(reply)
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
        }
        payload: dict[str, Any] = {
            "id": f"chatcmpl-test-{self.state.served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "scripted"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(output_ids),
                "total_tokens": len(prompt_ids) + len(output_ids),
            },
        }
        if body.get("return_token_ids") and not reply.omit_token_ids:
            payload["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = output_ids
        return payload


class OpenAITestServer:
    """See the module docstring."""

    def __init__(self, replies: list[Reply] | None = None, *, port: int = 0) -> None:
        self.state = _State(replies=list(replies or []))
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> OpenAITestServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.daemon_threads = True
        httpd.state = self.state  # type: ignore[attr-defined]
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def go_down(self) -> None:
        """Stop listening: clients get connection refused until :meth:`come_up`."""
        self.stop()

    def come_up(self) -> None:
        """Listen again on the same port."""
        if self._httpd is None:
            self.start()

    def __enter__(self) -> OpenAITestServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # scripting ---------------------------------------------------------------------------
    def script(self, *replies: Reply) -> None:
        """Replace the scripted replies and restart from the first one."""
        with self.state.lock:
            self.state.replies = list(replies)
            self.state.served = 0

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with HTTP ``status`` (recorded all the same)."""
        with self.state.lock:
            self.state.fail_remaining = n
            self.state.fail_status = status

    # inspection --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/") == CHAT_PATH]
