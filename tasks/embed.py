"""Embed step: encode item texts with a sentence-transformers model into data/features/NAME/.

Writes float32 embeddings.npy (row i = item id i) and manifest.json (model, backend, encoder identity, dim, text
sha256 per item). A cache keyed on (encoder identity, text sha256) means unchanged items are never re-encoded; the
identity is the model, plus the backend for onnx-int8 (semid.models.encoder.encoder_id says why fp32 onnx shares
torch's). The ONNX backends export the model once into embed.onnx_dir/<model>-<key>/ (key: the model files'
sha256 and the exporting libraries' versions), staged and renamed into place whole, each file's sha256 recorded
in export.json and checked before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from semid.models.encoder import DEFAULT_MODEL, EncoderBackendError, EncoderNotFound, encoder_id, model_path
from semid.models.encoder import load_encoder as _load_encoder
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import files_sha, sha256_file, staged_dir, user_cache_dir

EXPORT_LIBS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")  # their versions key the ONNX export


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_encoder(model: str, backend: str = "torch", onnx_dir: str | None = None, threads: int | None = None) -> Any:
    """The encoder of `model` on `backend` (an object with SentenceTransformer's encode); any failure is one
    PipelineError naming the fix, never a fallback to another backend."""
    try:
        st = _load_encoder(model)
        if backend == "torch":
            return st
        import torch

        from semid.models.onnx_encoder import FP32, INT8, OnnxEncoder

        folder = onnx_export(model, st, onnx_dir)
        path = verified(folder, FP32 if backend == "onnx" else INT8)
        return OnnxEncoder(st, path, threads or torch.get_num_threads())
    except EncoderNotFound as err:
        raise PipelineError(str(err), f"set embed.model to {DEFAULT_MODEL} or to a directory holding a "
                            "sentence-transformers model.") from None
    except EncoderBackendError as err:
        raise PipelineError(err.problem, err.fix) from None


def onnx_folder(model: str, onnx_dir: str | None) -> Path:
    """Where the model's ONNX export lives: named by the model, keyed by its files and the exporting libraries."""
    from semid.models.onnx_encoder import QUANTIZE

    key = hashlib.sha256(json.dumps({"files": files_sha([Path(model_path(model))]), "quantize": QUANTIZE,
                                     "libs": {d: _version(d) for d in EXPORT_LIBS}}, sort_keys=True).encode())
    base = Path(onnx_dir) if onnx_dir else user_cache_dir() / "onnx"
    return base / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(model).name)}-{key.hexdigest()[:16]}"


def onnx_export(model: str, st: Any, onnx_dir: str | None) -> Path:
    """The model's export folder, exported now if absent: built in a staging folder, renamed into place whole
    (a concurrent exporter that finished first wins; staging folders over an hour old are leftovers, removed)."""
    from semid.models.onnx_encoder import FP32, INT8, export

    folder = onnx_folder(model, onnx_dir)
    if folder.exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(".*-*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        info = export(st, staging)
        info.update(model=model, libs={d: _version(d) for d in EXPORT_LIBS},
                    sha256={f: sha256_file(staging / f) for f in (FP32, INT8)})
        (staging / "export.json").write_text(json.dumps(info, indent=1) + "\n")
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise EncoderBackendError(f"embed.backend onnx / onnx-int8 needs {dist}, which is not installed.",
                                  "pip install -e . (it is a dependency), or set embed.backend=torch.") from None


def verified(folder: Path, file: str) -> Path:
    """folder/file, if it is the file exported there (its sha256 as recorded in export.json)."""
    path, record = folder / file, folder / "export.json"
    fix = f"delete {folder} (the next run exports the model again), or set embed.backend=torch."
    if not record.exists():
        raise PipelineError(f"The ONNX export folder {folder} has no export.json (an incomplete or foreign folder).",
                            fix)
    if not path.exists() or sha256_file(path) != json.loads(record.read_text())["sha256"].get(file):
        state = "is missing" if not path.exists() else "does not match the sha256 recorded at export (corrupted)"
        raise PipelineError(f"The exported ONNX model {path} {state}.", fix)
    return path


class EmbeddingCache:
    """Append-only shards of (text sha256 -> vector) for one encoder identity."""

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
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_id(cfg.embed.model, cfg.embed.backend))


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
        e = cfg.embed
        encoder = encoder or load_encoder(e.model, e.backend, e.onnx_dir, e.onnx_threads)
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
        "backend": cfg.embed.backend,
        "encoder": encoder_id(cfg.embed.model, cfg.embed.backend),  # the identity the cache is keyed by
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
