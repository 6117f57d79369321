"""The errors TITO raises: one base class (``TitoError``, a ``ValueError``) and one subclass per
way a build can fail, each message saying what and where."""

from __future__ import annotations

from collections.abc import Sequence


class TitoError(ValueError):
    """TITO cannot build rows; the message says what and where."""


class EmptyRolloutSetError(TitoError):
    """No rejection-sampled trajectory (or none yielding a row): nothing is written."""


class TokenizerNotFoundError(TitoError, FileNotFoundError):
    """The tokenizer directory of a model does not exist or holds no tokenizer."""


class TitoLengthError(TitoError):
    """A row is longer than ``max_length`` under ``truncation="error"``."""


class TemplateDriftError(TitoError):
    """Our renderer does not reproduce the prompt ids the inference engine captured."""

    def __init__(
        self,
        traj_id: str,
        turn_index: int,
        position: int,
        rendered: Sequence[int],
        captured: Sequence[int],
        detail: str = "",
    ) -> None:
        self.traj_id = traj_id
        self.turn_index = turn_index
        self.position = position
        self.rendered_len = len(rendered)
        self.captured_len = len(captured)
        lo = max(0, position - 4)
        msg = (
            f"chat template drift in trajectory {traj_id}, turn {turn_index}: the prompt "
            f"rendered with steering differs from the captured prompt_token_ids at position "
            f"{position} (rendered {len(rendered)} ids, captured {len(captured)}; rendered "
            f"ids[{lo}:{position + 4}]={list(rendered[lo : position + 4])}, captured "
            f"ids[{lo}:{position + 4}]={list(captured[lo : position + 4])})"
        )
        if detail:
            msg += f"; {detail}"
        msg += (
            ". Refusing to train on misaligned tokens: render with the teacher's exact chat "
            "template and template kwargs, or drop the capture to re-tokenise."
        )
        super().__init__(msg)
