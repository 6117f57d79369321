"""What a TITO build is configured with (``TitoConfig``, checked when made; the modes it accepts)
and what it counts (``TitoStats``, the counters every stage of the build adds to; they end up in
the parquet metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from coop_dag.agent.actions import BASH_TOOL
from coop_dag.tito.errors import TitoError

TRUNCATION_MODES = ("error", "left", "right")
UPWEIGHT_MODES = ("duplicate", "weight")


@dataclass
class TitoConfig:
    upweight: int = 12
    upweight_turns: int = 3  # turns 0 .. upweight_turns-1
    upweight_mode: str = "duplicate"  # "duplicate" | "weight"
    strip_think: bool = True
    strip_steering: bool = True
    pack: bool = True
    max_length: int | None = None
    truncation: str = "error"  # "error" | "left" | "right"
    val_fraction: float = 0.1
    split_seed: int = 0
    eot_token: str = "<|im_end|>"
    tools: list[dict] | None = field(default_factory=lambda: [BASH_TOOL])
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    drift_check: str = "last"  # "last" | "first" | "all" captured turn(s) of a trajectory
    native_prompt: str = "splice"  # "splice" | "render"
    skip_actionless_turns: bool = True  # turns that executed nothing (format errors)

    def __post_init__(self) -> None:
        if not isinstance(self.upweight, int) or self.upweight < 1:
            raise TitoError(f"upweight must be an integer >= 1, got {self.upweight!r}")
        if self.upweight_mode not in UPWEIGHT_MODES:
            raise TitoError(
                f"upweight_mode must be one of {UPWEIGHT_MODES}: {self.upweight_mode!r}"
            )
        if self.truncation not in TRUNCATION_MODES:
            raise TitoError(f"truncation must be one of {TRUNCATION_MODES}: {self.truncation!r}")
        if self.max_length is not None and self.max_length < 2:
            raise TitoError(f"max_length must be >= 2 or None, got {self.max_length!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TitoError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.drift_check not in ("last", "first", "all"):
            raise TitoError(f"drift_check must be last|first|all, got {self.drift_check!r}")
        if self.native_prompt not in ("splice", "render"):
            raise TitoError(f"native_prompt must be splice|render, got {self.native_prompt!r}")

    @classmethod
    def from_variant(cls, variant: Any, **overrides: Any) -> TitoConfig:
        """Upweight, strip options and seed from a ``coop_dag.config.variants.Variant``."""
        strip = dict(getattr(variant, "strip", {}) or {})
        values: dict[str, Any] = {
            "upweight": int(getattr(variant, "upweight", 12)),
            "strip_think": bool(strip.get("think", True)),
            "strip_steering": bool(strip.get("steering", True)),
            "split_seed": int(getattr(variant, "seed", 0)),
        }
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class TitoStats:
    trajectories: int = 0
    trajectories_native: int = 0  # with at least one native row
    assistant_turns: int = 0
    turns_native: int = 0
    turns_retokenised: int = 0
    fallback_missing_capture_turns: int = 0  # native-eligible turns without ids
    fallback_missing_capture_trajectories: int = 0
    retokenised_other_tokenizer_turns: int = 0  # captured, but the teacher's tokenizer differs
    skipped_actionless_turns: int = 0
    dropped_unterminated_think: int = 0
    think_stripped_open_tag: int = 0
    think_stripped_prompt_think: int = 0
    think_stripped_bare_close: int = 0
    eot_appended: int = 0  # native outputs that lacked the end-of-turn id
    eot_trailing_cut: int = 0
    drift_checked_turns: int = 0
    native_prompt_from_capture: int = 0  # default-prompt ids spliced from (or = ) the capture
    native_prompt_rendered: int = 0
    packed_rows: int = 0  # rows holding more than one turn
    turns_merged: int = 0  # turns that joined an earlier row
    truncated_left: int = 0
    truncated_right: int = 0
    dropped_truncated: int = 0
    upweighted_turns: int = 0
    duplicate_rows_added: int = 0
    rows_train: int = 0
    rows_val: int = 0
    pairs_train: int = 0
    pairs_val: int = 0
    trained_tokens_train: int = 0
    total_tokens_train: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
