"""The templated teacher's turn-0 messages: regions of its own edit, and honest splits when both
features edit the same file (a proposal per shared file, never "no overlap", no placeholders)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from coop_dag import BUNDLED_DATASET
from coop_dag.agent.patch_regions import MODULE_LEVEL, patch_regions
from coop_dag.agent.plan_text import own_files
from coop_dag.agent.teachers import TemplatedTeacher
from coop_dag.dataset.discovery import discover_pairs
from coop_dag.dataset.tasks import Pair
from coop_dag.eval.plan_checks import plan_keywords
from coop_dag.util.paths import extract_paths

PAIRS = discover_pairs(BUNDLED_DATASET)
PLACEHOLDER_RE = re.compile(r"\{\w*\}|their files|TODO|<[a-z_ ]+>")


def shared_files(pair: Pair) -> set[str]:
    fa, fb = pair.features
    return set(own_files(fa)) & set(own_files(fb))


SAME_FILE = [p for p in PAIRS if shared_files(p)]
DISJOINT = [p for p in PAIRS if not shared_files(p)]


def message_body(response) -> str:
    (call,) = response.tool_calls
    command = json.loads(call["function"]["arguments"])["command"]
    assert command.startswith("send_message")
    return command.split("\n", 1)[1].rsplit("\nMSG", 1)[0]


def exchange(pair: Pair, seed: int = 0) -> tuple[str, str]:
    """(proposal of agent1, reply of agent2 once agent1's proposal is in its inbox)."""
    fa, fb = pair.features
    proposer = TemplatedTeacher(pair, fa, "agent1", "agent2", seed=seed)
    responder = TemplatedTeacher(pair, fb, "agent2", "agent1", seed=seed)
    proposal = message_body(proposer.query([{"role": "system", "content": "task"}], []))
    inbox = [{"role": "user", "content": f"[Message from agent1]: {proposal}"}]
    return proposal, message_body(responder.query(inbox, []))


def reply_to(pair: Pair, plan: str, seed: int = 0) -> str:
    responder = TemplatedTeacher(pair, pair.features[1], "agent2", "agent1", seed=seed)
    return message_body(responder.query([{"role": "user", "content": plan}], []))


# ---------------------------------------------------------------------------------------------
# patch_regions


BASE = textwrap.dedent(
    '''\
    import os

    LIMIT = 3


    class Box:
        """A box."""

        size: int = 0

        def grow(self, n):
            def helper(x):
                return x + 1

            return helper(n)

        def shrink(self, n):
            return n - 1


    def free(x):
        return x
    '''
)

PATCH = textwrap.dedent(
    """\
    diff --git a/box.py b/box.py
    index 1111111..2222222 100644
    --- a/box.py
    +++ b/box.py
    @@ -1,6 +1,7 @@
     import os
    +import sys

     LIMIT = 3


     class Box:
    @@ -11,12 +12,16 @@ class Box:
         def grow(self, n):
             def helper(x):
    -            return x + 1
    +            return x + 2

             return helper(n)

    +    def reset(self):
    +        self.size = 0
    +        return self
    +
         def shrink(self, n):
             return n - 1


     def free(x):
    -    return x
    +    return x * 2
    """
)


def test_patch_regions_with_base_sources(tmp_path: Path) -> None:
    (tmp_path / "box.py").write_text(BASE)
    regions = patch_regions(PATCH, tmp_path)
    # the nested helper counts as its function; the new method by its own qualified name
    assert regions == {"box.py": [MODULE_LEVEL, "Box.grow()", "Box.reset()", "free()"]}


def test_patch_regions_without_base_sources_uses_the_hunks() -> None:
    regions = patch_regions(PATCH)
    assert regions["box.py"][0] == MODULE_LEVEL
    assert {"Box.reset()", "free()"} <= set(regions["box.py"])
    assert "shrink()" not in " ".join(regions["box.py"])  # untouched, only context


def test_patch_regions_of_a_bundled_feature() -> None:
    pair = next(p for p in PAIRS if p.repo == "webroute_task" and p.pair_key == "f2_f4")
    f2, f4 = pair.features
    base = f2.dir.parent / "repo"
    r2 = patch_regions(f2.feature_patch.read_text(), base)
    r4 = patch_regions(f4.feature_patch.read_text(), base)
    assert r2["src/webroute/errors.py"] == ["RequestRedirect"]
    assert {"Router.__init__()", "Router.match()"} <= set(r2["src/webroute/router.py"])
    assert {"Router.__init__()", "Router.add()", "Router.allowed_methods()"} <= set(
        r4["src/webroute/router.py"]
    )


# ---------------------------------------------------------------------------------------------
# turn-0 messages over the bundled dataset


def test_dataset_has_same_file_and_disjoint_pairs() -> None:
    assert len(SAME_FILE) >= 13 and DISJOINT
    assert {p.repo for p in SAME_FILE} == {p.repo for p in PAIRS}, "every repo has one"


@pytest.mark.parametrize("pair", SAME_FILE, ids=[p.pair_id for p in SAME_FILE])
def test_same_file_pairs_get_a_split_of_the_shared_file(pair: Pair) -> None:
    proposal, reply = exchange(pair)
    shared = shared_files(pair)
    for body in (proposal, reply):
        assert not PLACEHOLDER_RE.search(body), body
        assert len(plan_keywords(body)) >= 2 and extract_paths(body), body
    # the proposer cannot know the partner's files: it offers to split, and names its regions
    assert re.search(r"split (it|that file)", proposal)
    assert "(`" in proposal
    # the responder sees both plans: no "no overlap", each shared file is split explicitly
    assert "overlap" not in reply.lower() or "we overlap" in reply.lower(), reply
    assert "no overlap" not in reply.lower(), reply
    for path in shared:
        assert f"In `{path}` " in reply, reply
    assert "split" in reply.lower()


@pytest.mark.parametrize("pair", DISJOINT, ids=[p.pair_id for p in DISJOINT])
def test_disjoint_pairs_confirm_each_sides_files(pair: Pair) -> None:
    proposal, reply = exchange(pair)
    fa, fb = pair.features
    assert not PLACEHOLDER_RE.search(proposal) and not PLACEHOLDER_RE.search(reply)
    assert set(own_files(fa)) <= set(extract_paths(reply)), "echoes the partner's files"
    assert set(own_files(fb)) <= set(extract_paths(reply))
    assert "In `" not in reply  # no split of a file nobody shares


def test_conflicting_function_is_named_as_contested() -> None:
    """webroute f2 and f4 both change `Router.__init__` (their gold patches conflict)."""
    pair = next(p for p in PAIRS if p.repo == "webroute_task" and p.pair_key == "f2_f4")
    assert pair.task.dir.joinpath("manifest.json").read_text().count('"conflicts"') >= 1
    _, reply = exchange(pair)
    clause = reply.split("In `src/webroute/router.py` ", 1)[1].split(". ", 1)[0]
    assert "I take `Router.add()`, `Router.allowed_methods()`" in clause
    assert "you take `Router.match()`" in clause
    assert "we both need `Router.__init__()`" in clause
    assert "You also keep `src/webroute/errors.py`" in reply


def test_clean_same_file_pair_splits_without_contested_code() -> None:
    """verspec f1 (`Specifier.contains`) and f2 (`SpecifierSet`) share a file, not a function."""
    pair = next(p for p in PAIRS if p.repo == "verspec_task" and p.pair_key == "f1_f2")
    _, reply = exchange(pair)
    assert "In `src/verspec/specifier.py` I take `SpecifierSet.__init__()`" in reply
    assert "you take `_range_upper()`, `Specifier.contains()`" in reply
    assert "we both need" not in reply


def test_partner_plan_without_files_gets_a_question_not_a_placeholder() -> None:
    pair = SAME_FILE[0]
    for seed in range(4):
        reply = reply_to(
            pair, "[Message from agent1]: Hi! Let's coordinate, what is your plan?", seed
        )
        assert not PLACEHOLDER_RE.search(reply)
        assert "overlap" not in reply.lower()
        assert "?" in reply and set(own_files(pair.features[1])) <= set(extract_paths(reply))


def test_partner_plan_naming_a_shared_file_without_functions() -> None:
    """An LLM partner may name only the file: the reply still splits it and asks."""
    pair = next(p for p in PAIRS if p.repo == "webroute_task" and p.pair_key == "f2_f4")
    plan = (
        "[Message from agent1]: Plan: I'll edit src/webroute/router.py and src/webroute/errors.py."
    )
    reply = reply_to(pair, plan)
    assert "In `src/webroute/router.py` I take `Router.__init__()`" in reply
    assert "you take the rest of it (tell me which functions)" in reply
    assert "no overlap" not in reply.lower() and not PLACEHOLDER_RE.search(reply)


# ---------------------------------------------------------------------------------------------
# turn 1 of a proposer: settle a shared file when the proposals crossed


def command_of(response) -> str:
    (call,) = response.tool_calls
    return json.loads(call["function"]["arguments"])["command"]


def proposer_turn1(pair: Pair, partner_text: str) -> tuple[TemplatedTeacher, str]:
    """agent1 proposes, then sees `partner_text` in its `--wait` observation."""
    agent1 = TemplatedTeacher(pair, pair.features[0], "agent1", "agent2", seed=0)
    # the prompt describes the inbox marker; that is not a message from the partner
    protocol = "Messages arrive as `[Message from agent2]: ...`; never write them yourself."
    history: list[dict] = [
        {"role": "system", "content": protocol},
        {"role": "user", "content": f"## Your Task\n{protocol}"},
    ]
    first = agent1.query(history, [])
    history += [
        {"role": "assistant", "content": first.content, "tool_calls": first.tool_calls},
        {"role": "tool", "content": f"Message sent to agent2.\n{partner_text}"},
    ]
    return agent1, command_of(agent1.query(history, []))


@pytest.mark.parametrize("pair", SAME_FILE, ids=[p.pair_id for p in SAME_FILE])
def test_crossed_proposals_on_a_shared_file_get_a_follow_up_split(pair: Pair) -> None:
    partner = TemplatedTeacher(pair, pair.features[1], "agent2", "agent1", seed=0)
    crossed = message_body(partner.query([{"role": "system", "content": "task"}], []))
    agent1, command = proposer_turn1(pair, f"[Message from agent2]: {crossed}")
    assert command.startswith("send_message agent2 <<'MSG'\n"), command
    body = command.split("\n", 1)[1].rsplit("\nMSG", 1)[0]
    assert not PLACEHOLDER_RE.search(body) and "no overlap" not in body.lower()
    for path in shared_files(pair):
        assert f"In `{path}` " in body, body
    # the rest of the script follows, one turn later
    history = [{"role": "system", "content": "task"}, {"role": "tool", "content": crossed}]
    assert command_of(agent1.query(history, [])).startswith("grep -n")


@pytest.mark.parametrize(
    "pair",
    [SAME_FILE[0], DISJOINT[0]],
    ids=["same-file-pair-already-split", "disjoint-pair"],
)
def test_no_follow_up_when_the_reply_settled_it_or_files_are_disjoint(pair: Pair) -> None:
    _, reply = exchange(pair)  # agent2's reply: splits shared files, or confirms disjoint ones
    _, command = proposer_turn1(pair, f"[Message from agent2]: {reply}")
    assert command.startswith("grep -n"), command


def test_files_the_partner_hands_to_me_are_not_its_claims() -> None:
    """ "I'll edit `a`; you probably edit `b`" claims only `a`: no overlap on `b` is invented."""
    pair = next(p for p in PAIRS if p.repo == "webroute_task" and p.pair_key == "f1_f3")
    mine = own_files(pair.features[1])  # src/webroute/pattern.py
    plan = (
        "[Message from agent1]: Plan: I'll edit `src/webroute/converters.py`; "
        f"you probably edit `{mine[0]}`."
    )
    reply = reply_to(pair, plan)
    assert "In `" not in reply and "src/webroute/converters.py" in reply
    only_guess = f"[Message from agent1]: Plan: you take `{mine[0]}`, right? Split?"
    reply = reply_to(pair, only_guess)
    assert "?" in reply and "overlap" not in reply.lower() and "In `" not in reply


def test_follow_up_asks_for_regions_the_partner_left_unnamed() -> None:
    """textable f1 and f4 each touch four functions of table.py; a plan names three and says
    "and 1 more", so the split must not claim the unnamed one is free."""
    pair = next(p for p in PAIRS if p.repo == "textable_task" and p.pair_key == "f1_f4")
    partner = TemplatedTeacher(pair, pair.features[1], "agent2", "agent1", seed=0)
    crossed = message_body(partner.query([{"role": "system", "content": "task"}], []))
    assert "and 1 more)" in crossed
    _, command = proposer_turn1(pair, f"[Message from agent2]: {crossed}")
    assert "you left 1 more unnamed there" in command
    assert "we both need `Table.__init__()`, `Table.column_widths()`" in command


def test_a_parse_that_collides_with_another_threads_parse_is_parsed_again(monkeypatch):
    """CPython 3.11's AST constructor shares a depth counter between threads: a parse of ours
    interleaved with the standard library's (a traceback being formatted) raises SystemError.
    The regions of that file are still found; any other SystemError is not swallowed."""
    import ast

    from coop_dag.agent import patch_regions as pr

    source = "import os\n\n\nclass Clock:\n    def tick(self):\n        return 1\n"
    real_parse, calls = ast.parse, []

    def collide_once(text, *args, **kwargs):
        calls.append(text)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=4, after=9)")
        return real_parse(text, *args, **kwargs)

    monkeypatch.setattr(pr.ast, "parse", collide_once)
    assert pr._scopes(source) == [(4, 6, 0, "Clock", False), (5, 6, 4, "Clock.tick", True)]
    assert len(calls) == 2

    def other_error(text, *args, **kwargs):
        raise SystemError("something else")

    monkeypatch.setattr(pr.ast, "parse", other_error)
    with pytest.raises(SystemError, match="something else"):
        pr._scopes(source)
