from coop_dag.agent.prompts import format_error, render_prompts, steering_section, strip_steering
from coop_dag.util.paths import extract_paths

TASK = "**Title**: Add TTL\n\n**Files Modified**\n- `src/lrucache/cache.py`\n"


def test_default_prompt_has_coop_sections_and_no_steering():
    p = render_prompts(TASK, "agent1", "agent2", steering=False)
    for heading in ("## Your Task", "## Your Situation", "## Messaging", "## Submission"):
        assert heading in p.instance
    assert "send_message agent2" in p.instance
    assert "Plan-First Coordination Protocol" not in p.instance
    assert p.kind == "default"
    assert extract_paths(p.instance) == ["src/lrucache/cache.py"]


def test_steering_is_added_for_teachers_and_strips_back_exactly():
    steered = render_prompts(TASK, "agent2", "agent1", steering=True)
    plain = render_prompts(TASK, "agent2", "agent1", steering=False)
    assert steered.kind == "steering"
    assert steering_section() in steered.instance
    assert steered.instance != plain.instance
    assert strip_steering(steered.instance) == plain.instance
    assert steered.system == plain.system


def test_format_error_shows_the_xml_tool_call_form():
    text = format_error("No bash tool call was found in your response.")
    assert "<function=bash>" in text and "No bash tool call" in text
