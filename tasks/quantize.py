"""Quantize step: fit the configured quantizer on the item embeddings and write unique semantic IDs (or, in
incremental mode, encode with the champion's codebook keeping its registered IDs).

data/semantic/NAME/: quantizer/ (safetensors + JSON), codes.npy (pre-resolution codes [N, L]),
ids.parquet (item_id, source_id, final unique semantic ID, code_0..), quantize.json (fit time, collisions).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from semid.models.collisions import duplicate_rate
from semid.models.drq import cooccurrence_pairs
from semid.models.quantizer import Quantizer, QuantizerInputError
from semid.models.semantic_ids import code_columns, fit_and_encode, sid_strings
from semid.models.semantic_ids import extend as extend_ids
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import staged_dir


def _write(name: str, cfg: Config, quantizer: Quantizer, codes: np.ndarray, ids: np.ndarray,
           summary: dict[str, Any]) -> dict[str, Any]:
    with staged_dir(layout.semantic_dir(cfg, name)) as folder:
        quantizer.save(folder / "quantizer")
        np.save(folder / "codes.npy", codes)
        items = layout.load_processed(cfg, name)["items"].sort_values("item_id").iloc[: len(codes)]
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
    """Fit + encode + resolve collisions on NAME's embeddings; DRQ's contrastive pairs come from user sequences."""
    x = layout.load_embeddings(cfg, name, mmap=True)
    pairs = None
    if cfg.quantizer.method == "drq" and cfg.quantizer.contrastive_weight > 0:
        inter = layout.load_processed(cfg, name)["interactions"]
        inter = inter[inter["item_id"] < len(x)]
        seqs = inter.sort_values(["user_id", "position"]).groupby("user_id")["item_id"].apply(list).tolist()
        pairs = cooccurrence_pairs(seqs, cfg.quantizer.cooccurrence_window)
    try:
        out = fit_and_encode(x, cfg.quantizer, pairs)
    except QuantizerInputError as err:
        raise PipelineError(f"Cannot fit the quantizer: {err}.") from None
    return _write(name, cfg, out["quantizer"], out["codes"], out["ids"],
                  {"mode": "fit", "fit_seconds": round(out["fit_seconds"], 3), "collision": out["collision"]})


def extend(name: str, cfg: Config, quantizer: Quantizer, champion_ids: pd.DataFrame) -> dict[str, Any]:
    """Incremental mode: encode every item with the champion's codebook; items the champion knows (same
    source_id) keep their registered ID, new items get codes with collisions resolved around the fixed ones."""
    x = layout.load_embeddings(cfg, name)
    items = layout.load_processed(cfg, name)["items"].sort_values("item_id")
    cols = code_columns(champion_ids)
    known = dict(zip(champion_ids["source_id"].astype(str), champion_ids[cols].to_numpy(np.int64), strict=True))
    try:
        codes, ids, info, fixed = extend_ids(quantizer, x, items["source_id"].astype(str).to_numpy(), known,
                                             cfg.quantizer.collision)
    except QuantizerInputError as err:
        raise PipelineError(f"Cannot encode {name} with the champion codebook: {err}.",
                            "set flow.mode=retrain to fit a new codebook.") from None
    return _write(name, cfg, quantizer, codes, ids, {"mode": "incremental", "fit_seconds": 0.0, "collision": info,
                                                     "known_items": int(fixed.sum()),
                                                     "new_items": int((~fixed).sum())})
