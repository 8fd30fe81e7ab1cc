"""Quantize step: fit the configured quantizer on the item embeddings and write semantic IDs.

data/semantic/NAME/: quantizer/ (safetensors + JSON), codes.npy (pre-resolution codes [N, L]),
ids.parquet (item_id, source_id, final unique semantic ID), quantize.json (fit time, collisions).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from models import build_quantizer
from models.collisions import duplicate_rate, extend_ids, resolve
from models.drq import cooccurrence_pairs
from models.kmeans import pairwise_sq_dist
from models.quantizer import Quantizer, QuantizerInputError
from tasks.config import Config, QuantizerConfig
from tasks.embed import load_embeddings
from tasks.errors import PipelineError
from tasks.fsutil import staged_dir
from tasks.validate import load_processed

PARAM_KEYS = ("dim", "hidden", "epochs", "batch_size", "lr", "beta", "ema_decay", "dead_code_threshold",
              "kmeans_iters", "kl_weight", "contrastive_weight", "collapse_active", "collapse_restarts")


def semantic_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.data.root) / "semantic" / name


def make_quantizer(q: QuantizerConfig) -> Quantizer:
    params = {k: getattr(q, k) for k in PARAM_KEYS}
    return build_quantizer(q.method, q.levels, q.codebook_size, list(q.distances), q.seed, **params)


def last_level_cost(quantizer: Quantizer, residual_last: torch.Tensor) -> np.ndarray:
    """Cost [N, K] of giving each item each last-level codeword, in that level's distance."""
    cb = quantizer.codebooks[-1]
    if quantizer.distances[-1] == "cosine":
        return (1 - F.normalize(residual_last, dim=1) @ F.normalize(cb, dim=1).T).numpy()
    return pairwise_sq_dist(residual_last, cb).numpy()


def fit_and_encode(x: np.ndarray, qcfg: QuantizerConfig, pairs: np.ndarray | None = None) -> dict[str, Any]:
    """Fit + encode + resolve collisions, no I/O. Returns quantizer, codes, ids and timings."""
    quantizer = make_quantizer(qcfg)
    start = time.perf_counter()
    try:
        quantizer.fit(x, pairs=pairs) if qcfg.method == "drq" else quantizer.fit(x)
    except QuantizerInputError as err:
        raise PipelineError(f"Cannot fit the quantizer: {err}.") from None
    fit_seconds = time.perf_counter() - start
    codes, residuals = quantizer.encode_with_residuals(x)
    ids, info = resolve(codes, qcfg.collision, last_level_cost(quantizer, residuals[-1]))
    return {"quantizer": quantizer, "codes": codes, "ids": ids, "collision": info, "fit_seconds": fit_seconds,
            "pre_duplicate_rate": duplicate_rate(codes), "final_duplicate_rate": duplicate_rate(ids)}


def sid_strings(ids: np.ndarray) -> list[str]:
    return ["-".join(str(int(v)) for v in row) for row in ids]


def code_columns(ids: pd.DataFrame) -> list[str]:
    """The per-level code columns (code_0, code_1, ...) of an ids.parquet table, in level order."""
    return sorted((c for c in ids.columns if c.startswith("code_")), key=lambda c: int(c[5:]))


def _write(name: str, cfg: Config, quantizer: Quantizer, codes: np.ndarray, ids: np.ndarray,
           summary: dict[str, Any]) -> dict[str, Any]:
    with staged_dir(semantic_dir(cfg, name)) as folder:
        quantizer.save(folder / "quantizer")
        np.save(folder / "codes.npy", codes)
        items = load_processed(cfg, name)["items"].sort_values("item_id").iloc[: len(codes)]
        table = pd.DataFrame({"item_id": items["item_id"].to_numpy(), "source_id": items["source_id"].to_numpy(),
                              "semantic_id": sid_strings(ids)})
        for level in range(ids.shape[1]):
            table[f"code_{level}"] = ids[:, level]
        table.to_parquet(folder / "ids.parquet", index=False)
        summary = {"dataset": name, "method": quantizer.method, "levels": quantizer.levels,
                   "codebook_size": quantizer.codebook_size, "distances": list(quantizer.distances),
                   "items": int(len(codes)), "pre_duplicate_rate": duplicate_rate(codes),
                   "final_duplicate_rate": duplicate_rate(ids), **summary,
                   "history_tail": quantizer.history[-3:]}
        (folder / "quantize.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def quantize(name: str, cfg: Config) -> dict[str, Any]:
    x = load_embeddings(cfg, name)
    pairs = None
    if cfg.quantizer.method == "drq" and cfg.quantizer.contrastive_weight > 0:
        inter = load_processed(cfg, name)["interactions"]
        inter = inter[inter["item_id"] < len(x)]
        seqs = inter.sort_values(["user_id", "position"]).groupby("user_id")["item_id"].apply(list).tolist()
        pairs = cooccurrence_pairs(seqs, cfg.quantizer.cooccurrence_window)
    out = fit_and_encode(x, cfg.quantizer, pairs)
    return _write(name, cfg, out["quantizer"], out["codes"], out["ids"],
                  {"mode": "fit", "fit_seconds": round(out["fit_seconds"], 3), "collision": out["collision"]})


def _costs(r: torch.Tensor, cb: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1 - F.normalize(cb, dim=1) @ F.normalize(r, dim=0)
    return (cb - r).pow(2).sum(1)


def nearest_free_id(quantizer: Quantizer, residuals: list[torch.Tensor], code: np.ndarray, i: int, used: set,
                    width: int = 16) -> tuple[int, ...] | None:
    """The cheapest ID not in `used` that keeps item i's first L-2 codes: search the last two levels
    (the `width` nearest codewords of the second-to-last level, then the last level in cost order)."""
    levels = quantizer.levels
    if levels < 2:
        return None
    prefix = tuple(int(c) for c in code[: levels - 2])
    r = residuals[levels - 2][i]
    cost_a = _costs(r, quantizer.codebooks[levels - 2], quantizer.distances[levels - 2])
    best, best_cost = None, float("inf")
    for a in torch.argsort(cost_a)[:width].tolist():
        cost_b = _costs(r - quantizer.codebooks[levels - 2][a], quantizer.codebooks[-1], quantizer.distances[-1])
        for b in torch.argsort(cost_b).tolist():
            cand = (*prefix, a, b)
            if cand not in used:
                total = float(cost_a[a] + cost_b[b])
                if total < best_cost:
                    best, best_cost = cand, total
                break
    return best


def extend(name: str, cfg: Config, quantizer: Quantizer, champion_ids: pd.DataFrame) -> dict[str, Any]:
    """Incremental mode: encode every item with the champion's codebook; items the champion knows (same
    source_id) keep their registered ID, new items get codes with collisions resolved around the fixed ones."""
    x = load_embeddings(cfg, name)
    items = load_processed(cfg, name)["items"].sort_values("item_id")
    try:
        codes, residuals = quantizer.encode_with_residuals(x)
    except QuantizerInputError as err:
        raise PipelineError(f"Cannot encode {name} with the champion codebook: {err}.",
                            "set flow.mode=retrain to fit a new codebook.") from None
    known_ids = champion_ids.set_index(champion_ids["source_id"].astype(str))
    src = items["source_id"].astype(str).to_numpy()
    fixed = np.isin(src, known_ids.index.to_numpy())
    cols = code_columns(champion_ids)
    known = np.zeros((len(src), len(cols)), dtype=np.int64)
    known[fixed] = known_ids.loc[src[fixed], cols].to_numpy(np.int64)
    ids, info = extend_ids(codes, known, fixed, last_level_cost(quantizer, residuals[-1]), cfg.quantizer.collision,
                           search=lambda i, used: nearest_free_id(quantizer, residuals, codes[i], i, used))
    return _write(name, cfg, quantizer, codes, ids, {"mode": "incremental", "fit_seconds": 0.0, "collision": info,
                                                     "known_items": int(fixed.sum()),
                                                     "new_items": int((~fixed).sum())})
