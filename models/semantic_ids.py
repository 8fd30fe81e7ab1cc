"""From item embeddings to unique semantic IDs: fit a quantizer, encode, resolve collisions; or keep a registered
ID table and give only new items IDs (incremental mode). Also reads a codebook folder (quantizer/ + ids.parquet,
the quantize step's output and the registered codebook's artefacts)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semid.models.collisions import (
    LastLevelCost,
    duplicate_rate,
    extend_ids,
    last_level_cost,
    nearest_free_id,
    resolve,
)
from semid.models.params import QuantizerParams
from semid.models.quantizer import Quantizer, build_quantizer


def sid_strings(ids: np.ndarray) -> list[str]:
    """'12-7-201' per row of an ID matrix."""
    return ["-".join(str(int(v)) for v in row) for row in ids]


def code_columns(ids: pd.DataFrame) -> list[str]:
    """The per-level code columns (code_0, code_1, ...) of an ids.parquet table, in level order."""
    return sorted((c for c in ids.columns if c.startswith("code_")), key=lambda c: int(c[5:]))


def load_codebook(folder: Path) -> tuple[Quantizer, np.ndarray]:
    """The quantizer and the final semantic IDs [N, L(+1)] (item_id order) of a codebook folder."""
    ids = pd.read_parquet(Path(folder) / "ids.parquet").sort_values("item_id")
    return Quantizer.load(Path(folder) / "quantizer"), ids[code_columns(ids)].to_numpy(np.int64)


def fit_and_encode(x: np.ndarray, params: QuantizerParams, pairs: np.ndarray | None = None) -> dict[str, Any]:
    """Fit + encode + resolve collisions. Returns quantizer, codes, ids, collision info and timings.
    Raises QuantizerInputError on unusable input."""
    quantizer = build_quantizer(params)
    sample = fit_sample(len(x), params)
    start = time.perf_counter()
    if sample is None:
        x_fit = np.asarray(x)
        quantizer.fit(x_fit, pairs=pairs) if params.method == "drq" else quantizer.fit(x_fit)
    elif params.method == "drq":
        quantizer.fit(np.asarray(x[sample]), pairs=_pairs_within(pairs, sample, len(x)))
    else:
        quantizer.fit(np.asarray(x[sample]))
    fit_seconds = time.perf_counter() - start
    codes = encode_chunked(quantizer, x)
    ids, info = resolve(codes, params.collision, LastLevelCost(quantizer, x))
    return {"quantizer": quantizer, "codes": codes, "ids": ids, "collision": info, "fit_seconds": fit_seconds,
            "pre_duplicate_rate": duplicate_rate(codes), "final_duplicate_rate": duplicate_rate(ids)}


def fit_sample(n: int, params: QuantizerParams) -> np.ndarray | None:
    """The items the quantizer is fitted on: all of them up to quantizer.fit_sample, else a seeded sample of that
    many (sorted item ids), so the fit time stops growing with the catalogue; every item is encoded after."""
    if params.fit_sample is None or n <= params.fit_sample:
        return None
    return np.sort(np.random.default_rng(params.seed).choice(n, params.fit_sample, replace=False))


def _pairs_within(pairs: np.ndarray | None, sample: np.ndarray, n: int) -> np.ndarray | None:
    """DRQ's co-occurrence pairs between sampled items, renumbered to rows of the sample."""
    if pairs is None:
        return None
    row = np.full(n, -1, dtype=np.int64)
    row[sample] = np.arange(len(sample))
    mapped = row[np.asarray(pairs)]
    return mapped[(mapped >= 0).all(axis=1)]


def encode_chunked(quantizer: Quantizer, x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Codes [N, L] encoded `chunk` items at a time (x may be a memory map): memory is one chunk's residuals."""
    return np.concatenate([quantizer.encode(np.asarray(x[lo:lo + chunk])) for lo in range(0, len(x), chunk)])


def extend(quantizer: Quantizer, x: np.ndarray, source_ids: np.ndarray, known_ids: dict[str, np.ndarray],
           collision: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
    """Encode every item with a registered codebook; items in `known_ids` (source id -> registered ID row) keep
    their ID, new items get codes with collisions resolved around the fixed ones.
    Returns (codes, ids, collision info, fixed mask)."""
    codes, residuals = quantizer.encode_with_residuals(x)
    fixed = np.array([s in known_ids for s in source_ids], dtype=bool)
    width = len(next(iter(known_ids.values()))) if known_ids else codes.shape[1]
    known = np.zeros((len(source_ids), width), dtype=np.int64)
    if fixed.any():
        known[fixed] = np.stack([known_ids[s] for s in source_ids[fixed]])
    ids, info = extend_ids(codes, known, fixed, last_level_cost(quantizer, residuals[-1]), collision,
                           search=lambda i, used: nearest_free_id(quantizer, residuals, codes[i], i, used))
    return codes, ids, info, fixed


def assign_new(quantizer: Quantizer, x: np.ndarray, registered: np.ndarray) -> np.ndarray:
    """IDs for new items next to a registered ID table [N, W] (W = levels, or levels + 1 with a counter level):
    each new item gets its own code when no registered (or earlier new) item holds it, else the nearest free ID
    (the counter's next free value with a counter level; else the cheapest free code of the last two levels)."""
    codes, residuals = quantizer.encode_with_residuals(x)
    levels, width = codes.shape[1], registered.shape[1]
    used = {tuple(row) for row in registered.tolist()}
    counters: dict[tuple, set[int]] = defaultdict(set)  # prefix -> counters taken (counter level only)
    if width > levels:
        for row in used:
            counters[row[:levels]].add(row[levels])
    out = np.zeros((len(codes), width), dtype=np.int64)
    for i, code in enumerate(codes):
        prefix = tuple(code.tolist())
        if width > levels:  # counter level: the next free counter of this prefix
            taken = counters[prefix]
            candidate = (*prefix, next(c for c in range(len(taken) + 1) if c not in taken))
            taken.add(candidate[-1])
        else:
            candidate = prefix
            if candidate in used:
                candidate = nearest_free_id(quantizer, residuals, code, i, used) or candidate
        out[i] = candidate
        used.add(tuple(int(v) for v in candidate))
    return out
