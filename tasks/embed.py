"""Embed step: encode item texts with a sentence-transformers model into data/features/NAME/.

Writes float32 embeddings.npy (row i = item id i) and manifest.json (model, dim, text sha256 per item).
A cache keyed on (model id, text sha256) means unchanged items are never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from semid.models.encoder import DEFAULT_MODEL, EncoderNotFound
from semid.models.encoder import load_encoder as _load_encoder
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import staged_dir, user_cache_dir


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_encoder(model: str) -> Any:
    try:
        return _load_encoder(model)
    except EncoderNotFound as err:
        raise PipelineError(str(err), f"set embed.model to {DEFAULT_MODEL} or to a directory holding a "
                            "sentence-transformers model.") from None


class EmbeddingCache:
    """Append-only shards of (text sha256 -> vector) for one model."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.vectors: dict[str, np.ndarray] = {}
        for shard in sorted(folder.glob("shard-*.npz")) if folder.exists() else []:
            with np.load(shard) as z:
                self.vectors.update(zip(z["keys"].tolist(), z["vectors"], strict=True))

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"shard-{time.time_ns()}.npz"
        tmp = name.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=vectors.astype(np.float32))
        tmp.rename(name)
        self.vectors.update(zip(keys, vectors, strict=True))


def cache_folder(cfg: Config) -> Path:
    base = Path(cfg.embed.cache_dir) if cfg.embed.cache_dir else user_cache_dir() / "embeddings"
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.embed.model)


def encode_texts(
    texts: list[str], cfg: Config, progress: bool = False, encoder: Any = None
) -> tuple[np.ndarray, int, int]:
    """Vectors for texts via the cache; returns (vectors, distinct texts encoded now, items served from cache)."""
    cache = EmbeddingCache(cache_folder(cfg))
    keys = [text_sha(t) for t in texts]
    hits = sum(k in cache.vectors for k in keys)
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in cache.vectors and k not in todo:
            todo[k] = t
    if todo:
        encoder = encoder or load_encoder(cfg.embed.model)
        new_keys, new_texts = list(todo), list(todo.values())
        chunk = cfg.embed.batch_size * 4
        parts = []
        bar = _progress() if progress else None
        with bar or nullcontext():
            task = bar.add_task("embedding", total=len(new_texts)) if bar else None
            for start in range(0, len(new_texts), chunk):
                batch = new_texts[start:start + chunk]
                parts.append(encoder.encode(batch, batch_size=cfg.embed.batch_size, show_progress_bar=False,
                                            convert_to_numpy=True))
                if bar:
                    bar.update(task, advance=len(batch))
        cache.add(new_keys, np.concatenate(parts).astype(np.float32))
    return np.stack([cache.vectors[k] for k in keys]).astype(np.float32), len(todo), hits


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def check_vectors(vectors: np.ndarray, item_ids: list[Any]) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], vectors, 0), axis=1)
    bad = np.flatnonzero(~finite | (norms == 0))
    if len(bad):
        names = [str(item_ids[i]) for i in bad[:10]]
        raise PipelineError(
            f"{len(bad)} item embeddings are NaN/inf or zero (items {', '.join(names)}).",
            "check those items' text and the embedding model; empty text gives no usable embedding.",
        )


def embed(name: str, cfg: Config, progress: bool = False) -> dict[str, Any]:
    """Embed every item of data/processed/NAME; returns the manifest."""
    items = layout.load_processed(cfg, name)["items"].sort_values("item_id")
    texts = items["text"].fillna("").astype(str).tolist()
    empty = [str(s) for s, t in zip(items["source_id"], texts, strict=True) if not t.strip()]
    if len(empty) == len(texts):
        raise PipelineError(
            f"Dataset '{name}' has no item text, so it cannot get semantic IDs.",
            "use a dataset with text (semid data list, column 'text') or map text columns for your own data.",
        )
    if cfg.embed.max_items:
        texts = texts[: cfg.embed.max_items]
        items = items.iloc[: cfg.embed.max_items]
    start = time.perf_counter()
    vectors, fresh, hits = encode_texts(texts, cfg, progress)
    seconds = time.perf_counter() - start
    check_vectors(vectors, items["source_id"].tolist())
    manifest = {
        "dataset": name,
        "model": cfg.embed.model,
        "dim": int(vectors.shape[1]),
        "items": int(len(vectors)),
        "encoded": fresh,
        "cached": int(hits),
        "seconds": round(seconds, 3),
        "text_sha256": [text_sha(t) for t in texts],
        "empty_text_items": empty[:50],
    }
    with staged_dir(layout.features_dir(cfg, name)) as out:
        np.save(out / "embeddings.npy", vectors)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
