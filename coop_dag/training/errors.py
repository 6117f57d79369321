"""The trainers' errors (the embedded trainer's and verl's bridge raise the same ones)."""

from __future__ import annotations


class TrainError(ValueError):
    """Training cannot start or finish; the message says what and where."""


class TokenizerMismatchError(TrainError):
    """The parquet was tokenised with another tokenizer than the student's (or says nothing)."""


class ChatTemplateMismatchError(TrainError):
    """The parquet's prompts were rendered with another chat template than the student's."""


class EmptyTrainingSetError(TrainError):
    """No training row (an empty parquet, or every row dropped by max_turn / truncation)."""


class RecipeError(TrainError):
    """A bad or unknown recipe; the message names the file, recipe and key."""
