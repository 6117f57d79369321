"""Agent prompts: the default coop prompt and the teacher-only plan-first steering section."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jinja2
import yaml

from coop_dag import CONFIG_DIR

PROMPT_DIR = CONFIG_DIR / "prompts"


@dataclass(frozen=True)
class Prompts:
    system: str
    instance: str
    kind: str  # "default" | "steering": recorded in each trajectory so TITO can strip it


@lru_cache(maxsize=8)
def _load(name: str) -> dict:
    return yaml.safe_load((PROMPT_DIR / name).read_text())


def steering_section() -> str:
    return _load("steering.yaml")["steering_section"].strip()


def _render(template: str, **values: object) -> str:
    return jinja2.Template(template, undefined=jinja2.StrictUndefined).render(**values).strip()


def render_prompts(
    task: str,
    agent_id: str,
    partner_id: str,
    *,
    steering: bool,
) -> Prompts:
    cfg = _load("coop.yaml")
    section = steering_section() if steering else ""
    instance = _render(
        cfg["instance_template"],
        task=task.strip(),
        agent_id=agent_id,
        partner_id=partner_id,
        steering_section=section,
    )
    return Prompts(_render(cfg["system_template"]), instance, "steering" if steering else "default")


def strip_steering(text: str) -> str:
    """The default-prompt rendering of a steering-prompt text (exact section removal)."""
    section = steering_section()
    return text.replace("\n\n" + section, "").replace(section, "")


def format_error(error: str = "") -> str:
    return _render(_load("coop.yaml")["format_error_template"], error=error)
