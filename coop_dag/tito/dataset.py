"""``TitoSFTDataset``: TITO parquet rows as SFT training items, honouring verl's custom dataset
contract (``data.custom_cls`` of verl's ``sft_trainer``) and usable by an embedded HF trainer.

verl builds the class as ``cls(parquet_files=..., tokenizer=..., config=data_config,
processor=..., max_samples=...)`` and batches items with its ``SFTTensorCollator``: under
``pad_mode=no_padding`` every tensor becomes a jagged nested tensor (so every tensor here is
at least 1-D), under ``pad_mode=right`` ``default_collate`` stacks them (so every item has
length ``max_length``). Items carry what verl's ``MultiTurnSFTDataset`` returns:

- ``input_ids`` (int64), ``position_ids`` (``arange``; a packed row is one sequence),
  ``loss_mask`` (int64, 1 on trained tokens: the row's ``loss_spans``, output tokens only;
  verl's loss shifts it left by one to align with next-token log-probs),
- ``attention_mask`` under right padding (1 on real tokens, 0 on padding);

plus, for an HF trainer:

- ``labels`` = ``input_ids`` where ``loss_mask`` is 1, -100 elsewhere (HF shifts inside the
  model), and ``weight`` -- the row's loss weight, shape ``(1,)`` float32 (1.0 when upweighting
  was done by duplicating rows).

Config keys (dict or DictConfig-like with ``.get``): ``max_length`` (default 1024),
``truncation`` ``error|left|right`` (``left`` keeps the last ``max_length`` tokens, ``right``
the first, ``error`` raises naming the row), ``pad_mode`` ``right|no_padding`` (default
``right``), and as in verl ``shuffle`` / ``seed`` for ``max_samples`` selection. verl itself
truncates ``no_padding`` items on the right regardless of ``truncation``; this dataset
honours ``truncation`` in both modes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

PAD_MODES = ("right", "no_padding")
TRUNCATIONS = ("error", "left", "right")
IGNORE_INDEX = -100
# the columns an item is made of (the rest of a TITO parquet is provenance)
_COLUMNS = ("input_ids", "output_ids", "loss_spans", "weight", "traj_id", "turn_index")


def _cfg_get(config: Any, key: str, default: Any) -> Any:
    if config is None:
        return default
    if hasattr(config, "get"):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


class _ListColumn:
    """A pyarrow list column as flat numpy values + offsets (no per-row Python lists)."""

    def __init__(self, column: Any) -> None:
        import pyarrow as pa

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if arr.null_count:
            raise ValueError("null list in a TITO id column")
        self.offsets = np.asarray(arr.offsets, dtype=np.int64)
        self.values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _settings(config: Any) -> tuple[int, str, str]:
    """``(max_length, truncation, pad_mode)`` from the data config, checked."""
    max_length = int(_cfg_get(config, "max_length", 1024))
    truncation = str(_cfg_get(config, "truncation", "error"))
    pad_mode = str(_cfg_get(config, "pad_mode", "right"))
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    return max_length, truncation, pad_mode


def _read_tables(paths: Sequence[str]) -> Any:
    """The parquet files as one pyarrow table of the columns an item needs (schema metadata
    dropped so files of different builds concatenate)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        table = pq.read_table(path)
        missing = {"input_ids", "output_ids"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: not a TITO parquet (missing {sorted(missing)})")
        keep = [c for c in _COLUMNS if c in table.column_names]
        tables.append(table.select(keep).replace_schema_metadata(None))
    return pa.concat_tables(tables, promote_options="default")


def _sample(table: Any, max_samples: int, config: Any) -> Any:
    """The first ``max_samples`` rows, or (``shuffle``) that many drawn with ``seed`` and
    kept in file order, as verl selects them; all rows when ``max_samples`` is not below."""
    import pyarrow as pa

    total = table.num_rows
    if not 0 < max_samples < total:
        return table
    if bool(_cfg_get(config, "shuffle", False)):
        seed = _cfg_get(config, "seed", None)
        rng = np.random.default_rng(*(() if seed is None else (int(seed),)))
        indices = np.sort(rng.choice(total, size=max_samples, replace=False))
    else:
        indices = np.arange(max_samples)
    return table.take(pa.array(indices))


def _optional_list(table: Any, name: str) -> list | None:
    return table.column(name).to_pylist() if name in table.column_names else None


class TitoSFTDataset(torch.utils.data.Dataset):
    """TITO rows (``input_ids``, ``output_ids``, optional ``loss_spans`` and ``weight``) from
    one or more parquet files."""

    def __init__(
        self,
        parquet_files: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer: Any,
        config: Any = None,
        processor: Any = None,
        max_samples: int = -1,
    ) -> None:
        self.max_length, self.truncation, self.pad_mode = _settings(config)
        if isinstance(tokenizer, str | os.PathLike):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        self.tokenizer = tokenizer
        self.processor = processor
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0

        if isinstance(parquet_files, str | os.PathLike):
            parquet_files = [parquet_files]
        self.parquet_files = [str(p) for p in parquet_files]
        if not self.parquet_files:
            raise ValueError("TitoSFTDataset needs at least one parquet file")
        self._set_columns(_sample(_read_tables(self.parquet_files), max_samples, config))
        self._check_vocabulary(len(tokenizer))

    def _set_columns(self, table: Any) -> None:
        """Hold the table's columns as flat numpy ids (``_ListColumn``) and small lists."""
        self._input = _ListColumn(table.column("input_ids"))
        self._output = _ListColumn(table.column("output_ids"))
        self._spans = _optional_list(table, "loss_spans")
        self._weight = (
            np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float32)
            if "weight" in table.column_names
            else np.ones(table.num_rows, dtype=np.float32)
        )
        self._traj = _optional_list(table, "traj_id")
        self._turn = _optional_list(table, "turn_index")
        self._n = table.num_rows

    def _check_vocabulary(self, vocab: int) -> None:
        """Every id within the tokenizer's vocabulary (else the parquet is another model's)."""
        for col, name in ((self._input, "input_ids"), (self._output, "output_ids")):
            if col.values.size and (col.values.min() < 0 or col.values.max() >= vocab):
                raise ValueError(
                    f"{name} hold ids outside the tokenizer's vocabulary (size {vocab}): the "
                    "parquet was built for another tokenizer"
                )

    def __len__(self) -> int:
        return self._n

    def _where(self, i: int) -> str:
        if self._traj is not None:
            return f"row {i} ({self._traj[i]} turn {self._turn[i] if self._turn else '?'})"
        return f"row {i}"

    def sequence_lengths(self) -> np.ndarray:
        """Untruncated length of every row (input + output)."""
        return self._input.lengths() + self._output.lengths()

    def loss_spans(self, i: int) -> list[tuple[int, int]]:
        n_in = int(self._input.offsets[i + 1] - self._input.offsets[i])
        n_out = int(self._output.offsets[i + 1] - self._output.offsets[i])
        spans = self._spans[i] if self._spans is not None else None
        if not spans:
            return [(n_in, n_in + n_out)]
        return [(int(s), int(e)) for s, e in spans]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        ids = np.concatenate([self._input[i], self._output[i]])
        n = ids.shape[0]
        mask = np.zeros(n, dtype=np.int64)
        for s, e in self.loss_spans(i):
            if not 0 <= s <= e <= n:
                raise ValueError(f"{self._where(i)}: loss span [{s}, {e}) outside {n} ids")
            mask[s:e] = 1

        if n > self.max_length:
            if self.truncation == "error":
                raise ValueError(
                    f"{self._where(i)}: sequence_length={n} is larger than "
                    f"max_length={self.max_length} (truncation=error)"
                )
            keep = (
                slice(n - self.max_length, n)
                if self.truncation == "left"
                else slice(0, self.max_length)
            )
            ids, mask = ids[keep], mask[keep]
            n = self.max_length

        input_ids = torch.from_numpy(ids.astype(np.int64))
        loss_mask = torch.from_numpy(mask)
        position_ids = torch.arange(n, dtype=torch.long)
        labels = torch.where(loss_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        item = {"input_ids": input_ids, "position_ids": position_ids, "loss_mask": loss_mask}
        if self.pad_mode == "right":
            pad = self.max_length - n
            attention_mask = torch.ones(n, dtype=torch.long)
            if pad > 0:
                item["input_ids"] = torch.cat(
                    [input_ids, torch.full((pad,), self.pad_token_id, dtype=torch.long)]
                )
                attention_mask = torch.cat([attention_mask, torch.zeros(pad, dtype=torch.long)])
                item["loss_mask"] = torch.cat([loss_mask, torch.zeros(pad, dtype=torch.long)])
                item["position_ids"] = torch.cat([position_ids, torch.zeros(pad, dtype=torch.long)])
                labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
            item["attention_mask"] = attention_mask
        item["labels"] = labels
        item["weight"] = torch.tensor([float(self._weight[i])], dtype=torch.float32)
        return item
