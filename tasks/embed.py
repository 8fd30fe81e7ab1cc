"""Embed step: encode item texts with a sentence-transformers model into data/features/NAME/.

Writes float32 embeddings.npy (row i = item id i), manifest.json (model, backend, encoder identity, dim) and
text_sha256.json (the text hash of each item, in item order). A cache keyed on (encoder identity, text sha256) means
unchanged items are never re-encoded. Texts not in the cache are encoded in batches cut from them sorted by token
count (semid.models.encoder.token_order: 2-5 % padding on Amazon catalogues, against 29-37 % in sentence-transformers'
own character order). The identity is the model, plus the backend for onnx-int8
(semid.models.encoder.encoder_id says why fp32 onnx shares torch's). The ONNX backends export the model once into
embed.onnx_dir/<model>-<key>/ (key: the model files' sha256 and the exporting libraries' versions), staged and
renamed into place whole, each file's sha256 recorded in export.json and checked before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from semid.models.encoder import (
    DEFAULT_MODEL,
    EncoderBackendError,
    EncoderNotFound,
    encoder_id,
    model_path,
    token_order,
)
from semid.models.encoder import load_encoder as _load_encoder
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import files_sha, remove_stale_dirs, sha256_file, staged_dir, user_cache_dir

EXPORT_LIBS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")  # their versions key the ONNX export


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_encoder(model: str, backend: str = "torch", onnx_dir: str | None = None, threads: int | None = None,
                 memory: str = "arena") -> Any:
    """The encoder of `model` on `backend` (an object with SentenceTransformer's encode); any failure is one
    PipelineError naming the fix, never a fallback to another backend."""
    try:
        st = _load_encoder(model)
        if backend == "torch":
            return st
        import torch

        from semid.models.onnx_encoder import FP32, INT8, OnnxEncoder

        path, _ = verified(onnx_export(model, st, onnx_dir), FP32 if backend == "onnx" else INT8)
        return OnnxEncoder(st, path, threads or torch.get_num_threads(), memory)
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


def onnx_export(model: str, st: Any | None, onnx_dir: str | None) -> Path:
    """The model's export folder, exported now if absent (from `st`, else the model loaded now): built in a staging
    folder, renamed into place whole (a concurrent exporter that finished first wins; staging folders over an hour
    old are leftovers, removed)."""
    from semid.models.onnx_encoder import FP32, INT8, export

    folder = onnx_folder(model, onnx_dir)
    with _EXPORT_LOCK:  # torch.export is not thread-safe (two shard threads exporting at once failed)
        if folder.exists():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_dirs(folder.parent.glob(".*-*"), 3600)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            info = export(st if st is not None else _load_encoder(model), staging)
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


_EXPORT_LOCK = threading.Lock()  # one export at a time in a process; processes race safely via the staging rename


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise EncoderBackendError(f"embed.backend onnx / onnx-int8 needs {dist}, which is not installed.",
                                  "pip install -e . (it is a dependency), or set embed.backend=torch.") from None


def verified(folder: Path, file: str) -> tuple[Path, str]:
    """folder/file and its sha256, if it is the file exported there (its sha256 as recorded in export.json)."""
    path, record = folder / file, folder / "export.json"
    fix = f"delete {folder} (the next run exports the model again), or set embed.backend=torch."
    if not record.exists():
        raise PipelineError(f"The ONNX export folder {folder} has no export.json (an incomplete or foreign folder).",
                            fix)
    sha = json.loads(record.read_text())["sha256"].get(file)
    if not path.exists() or sha256_file(path) != sha:
        state = "is missing" if not path.exists() else "does not match the sha256 recorded at export (corrupted)"
        raise PipelineError(f"The exported ONNX model {path} {state}.", fix)
    return path, sha


class EmbeddingCache:
    """(text sha256 -> vector) entries of one encoder identity, append-only: each write is a pair
    keys-<id>.npy (sha256 hex as bytes) + vectors-<id>.npy, the keys file renamed into place last, so a reader sees
    whole entries only and writers never collide. A lookup reads the key files and only the matching rows of the
    vector files (memory-mapped): its memory is that of the keys asked for, not of the cache. Entries written by
    earlier versions (shard-*.npz) are read too."""

    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        want = np.unique(np.array(keys, dtype="S64"))
        found: dict[str, np.ndarray] = {}
        if not self.folder.exists() or not len(want):
            return found
        for keys_file in sorted(self.folder.glob("keys-*.npy")):
            have = np.load(keys_file)
            rows = np.flatnonzero(np.isin(have, want))
            if len(rows):
                vectors = np.load(keys_file.with_name("vectors-" + keys_file.name[5:]), mmap_mode="r")
                found.update(zip(have[rows].astype(str).tolist(), np.asarray(vectors[rows]), strict=True))
        for old in sorted(self.folder.glob("shard-*.npz")):
            with np.load(old) as z:
                have = z["keys"].astype("S64")
                rows = np.flatnonzero(np.isin(have, want))
                if len(rows):
                    found.update(zip(have[rows].astype(str).tolist(), z["vectors"][rows], strict=True))
        return found

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = uuid.uuid4().hex
        for kind, array in (("vectors", vectors.astype(np.float32)), ("keys", np.array(keys, dtype="S64"))):
            tmp = self.folder / f".{kind}-{entry}.tmp.npy"
            np.save(tmp, array)
            tmp.rename(self.folder / f"{kind}-{entry}.npy")


def cache_folder(cfg: Config) -> Path:
    base = Path(cfg.embed.cache_dir) if cfg.embed.cache_dir else user_cache_dir() / "embeddings"
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_id(cfg.embed.model, cfg.embed.backend))


def encode_texts(
    texts: list[str], cfg: Config, progress: bool = False, encoder: Any = None
) -> tuple[np.ndarray, int, int]:
    """Vectors for texts via the cache; returns (vectors, distinct texts encoded now, items served from cache)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32), 0, 0
    cache = EmbeddingCache(cache_folder(cfg))
    keys = [text_sha(t) for t in texts]
    known = cache.get(keys)
    hits = sum(k in known for k in keys)
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in known and k not in todo:
            todo[k] = t
    if todo:
        e = cfg.embed
        encoder = encoder or load_encoder(e.model, e.backend, e.onnx_dir, e.onnx_threads, e.onnx_memory)
        new_keys, new_texts = list(todo), list(todo.values())
        size = cfg.embed.batch_size
        order = token_order(encoder, new_texts)  # one encode call a batch, so the batch stays one length
        fresh = None
        bar = _progress() if progress else None
        with bar or nullcontext():
            task = bar.add_task("embedding", total=len(new_texts)) if bar else None
            for start in range(0, len(new_texts), size):
                rows = order[start:start + size]
                vectors = encoder.encode([new_texts[i] for i in rows], batch_size=size, show_progress_bar=False,
                                         convert_to_numpy=True)
                if fresh is None:
                    fresh = np.empty((len(new_texts), vectors.shape[1]), dtype=np.float32)
                fresh[rows] = vectors
                if bar:
                    bar.update(task, advance=len(rows))
        cache.add(new_keys, fresh)
        known.update(zip(new_keys, fresh, strict=True))
    return np.stack([known[k] for k in keys]).astype(np.float32), len(todo), hits


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


def _item_texts(cfg: Config, name: str) -> tuple[list[Any], list[str]]:
    """(source ids, texts) in item-id order, the first embed.max_items only if set."""
    import pyarrow.parquet as pq

    path = layout.processed_dir(cfg, name) / "items.parquet"
    if not path.exists():
        raise PipelineError(f"No processed data for '{name}' in {path.parent}.", f"run `semid data validate {name}`.")
    table = pq.read_table(path, columns=["item_id", "source_id", "text"]).sort_by("item_id")
    if cfg.embed.max_items:
        table = table.slice(0, cfg.embed.max_items)
    texts = [t or "" for t in table.column("text").to_pylist()]
    return table.column("source_id").to_pylist(), texts


def plan(name: str, cfg: Config) -> list[dict[str, Any]]:
    """The shard plan: consecutive item-id ranges, each one task, of embed.shard_size items or fewer so that every
    one of flow.workers has a shard, all in one folder of this run (shards/embed/NAME/<run token>/: concurrent
    runs never share shard files; folders a killed run left over a day ago are removed).

    Writes first.npy there: per item, the first item with the same text. Only that item's shard encodes the text
    and the join copies its vector to the others, so a text's vector never depends on which concurrent shard
    reached the cache first (sentence-transformers' vectors move in the last bits with the batch a text is
    encoded in)."""
    sources, texts = _item_texts(cfg, name)
    if not any(t.strip() for t in texts):
        raise PipelineError(
            f"Dataset '{name}' has no item text, so it cannot get semantic IDs.",
            "use a dataset with text (semid data list, column 'text') or map text columns for your own data.",
        )
    seen: dict[str, int] = {}
    first = np.array([seen.setdefault(text_sha(t), i) for i, t in enumerate(texts)], dtype=np.int64)
    base = layout.shards_dir(cfg, "embed", name)
    remove_stale_dirs(base.glob("*") if base.exists() else [], 86_400)
    folder = base / uuid.uuid4().hex
    folder.mkdir(parents=True)
    np.save(folder / "first.npy", first)
    return [{**r, "dir": str(folder)} for r in _ranges(len(texts), cfg)]


def _ranges(n: int, cfg: Config) -> list[dict[str, int]]:
    size = max(1, min(cfg.embed.shard_size, -(-n // cfg.flow.workers)))
    return [{"index": i, "start": lo, "stop": min(lo + size, n)} for i, lo in enumerate(range(0, n, size))]


def _owned(shard: dict[str, Any]) -> np.ndarray:
    """The items of the shard whose text it encodes (each the first item with that text)."""
    lo, hi = shard["start"], shard["stop"]
    first = np.load(Path(shard["dir"]) / "first.npy", mmap_mode="r")[lo:hi]
    return np.flatnonzero(first == np.arange(lo, hi)) + lo


def _worker_encoder(cfg: Config) -> Any:
    """One encoder per worker thread and encoder config: loaded by the worker's first shard, reused by the rest
    (sentence-transformers' tokenizer is not safe to share between threads)."""
    e = cfg.embed
    key = (e.model, e.backend, e.onnx_dir, e.onnx_threads, e.onnx_memory, torch_threads())
    if not hasattr(_ENCODERS, "by_key"):
        _ENCODERS.by_key = {}
    cache = _ENCODERS.by_key
    if key not in cache:
        cache[key] = load_encoder(e.model, e.backend, e.onnx_dir, e.onnx_threads, e.onnx_memory)
    return cache[key]


_ENCODERS = threading.local()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_task_threads(n: int) -> None:
    """A shard task's threads, set explicitly (a Dask worker starts with OMP_NUM_THREADS=1): torch and faiss."""
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def embed_shard(name: str, cfg: Config, shard: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Embed the texts a shard owns (through the text cache) into its shard file, written whole or not at all;
    returns a small manifest (never the vectors)."""
    set_task_threads(cfg.flow.task_threads())
    sources, texts = _item_texts(cfg, name)
    rows = _owned(shard)
    start = time.perf_counter()
    vectors, fresh, hits = encode_texts([texts[i] for i in rows], cfg, progress, encoder=_worker_encoder(cfg))
    check_vectors(vectors, [sources[i] for i in rows])
    out = Path(shard["dir"]) / f"shard-{shard['index']:05d}.npy"
    tmp = out.with_name(f".{out.stem}-{uuid.uuid4().hex}.npy")
    np.save(tmp, vectors)
    tmp.rename(out)
    copies = shard["stop"] - shard["start"] - len(rows)  # items whose text an earlier item has
    return {**shard, "path": str(out), "sha256": sha256_file(out), "dim": int(vectors.shape[1]),
            "encoded": fresh, "cached": hits + copies, "seconds": round(time.perf_counter() - start, 3),
            "encoder": encoder_id(cfg.embed.model, cfg.embed.backend)}  # int8: this worker's kernel class


def join(name: str, cfg: Config, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the shard files, checked against their manifests, into features/NAME/embeddings.npy (written through
    a memory map: one shard in memory at a time) + manifest.json (small) + text_sha256.json (one hash per item);
    returns the manifest. The shard files are removed once the join is in place."""
    sources, texts = _item_texts(cfg, name)
    shards = sorted(shards, key=lambda s: s["start"])
    covered = [(s["start"], s["stop"]) for s in shards]
    expected = [(s["start"], s["stop"]) for s in _ranges(len(texts), cfg)]
    if covered != expected or len({s["dir"] for s in shards}) != 1:
        raise PipelineError(f"The embedding shards of '{name}' cover {covered[:3]}..., not the plan {expected[:3]}...",
                            f"run `semid embed {name}` again (the items changed since the shards were planned).")
    for s in shards:
        if not Path(s["path"]).exists() or sha256_file(Path(s["path"])) != s["sha256"]:
            raise PipelineError(f"Embedding shard {s['path']} is missing or not the file its task wrote.",
                                f"run `semid embed {name}` again.")
    identity = encoder_id(cfg.embed.model, cfg.embed.backend)
    identities = sorted({s.get("encoder", "unrecorded") for s in shards})
    if identities != [identity]:
        raise PipelineError(f"The embedding shards of '{name}' were encoded by {identities}, not one encoder "
                            f"identity ({identity} here): int8 vectors differ "
                            "between CPUs with different int8 kernels.",
                            "run the embed step on workers of one CPU class, or use embed.backend=onnx or torch.")
    dim = shards[0]["dim"]  # the first shard owns at least its first item's text
    manifest = {
        "dataset": name,
        "model": cfg.embed.model,
        "backend": cfg.embed.backend,
        "encoder": identity,  # the identity the cache is keyed by
        "dim": int(dim),
        "items": len(texts),
        "shards": len(shards),
        "encoded": sum(s["encoded"] for s in shards),
        "cached": sum(s["cached"] for s in shards),
        "seconds": round(sum(s["seconds"] for s in shards), 3),
        "empty_text_items": [str(i) for i, t in zip(sources, texts, strict=True) if not t.strip()][:50],
    }
    if cfg.embed.backend == "onnx-int8":  # the file that encoded the catalogue: registered with the codebook, so that
        from semid.models.onnx_encoder import INT8  # serving encodes new texts with the same encoder identity

        path, sha = verified(onnx_export(cfg.embed.model, None, cfg.embed.onnx_dir), INT8)
        manifest.update(onnx_model=str(path), onnx_sha256=sha)
    with staged_dir(layout.features_dir(cfg, name)) as out:
        array = np.lib.format.open_memmap(out / "embeddings.npy", mode="w+", dtype=np.float32,
                                          shape=(len(texts), dim))
        for s in shards:
            if s["dim"]:  # a shard whose texts all appeared in earlier shards has no rows
                array[_owned(s)] = np.load(s["path"], mmap_mode="r")
        first = np.load(Path(shards[0]["dir"]) / "first.npy", mmap_mode="r")
        for lo in range(0, len(first), 1 << 16):  # items sharing a text get its first item's vector
            chunk = np.asarray(first[lo:lo + (1 << 16)])
            copies = np.flatnonzero(chunk != np.arange(lo, lo + len(chunk)))
            array[copies + lo] = array[chunk[copies]]
        array.flush()
        del array
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")  # small: register reads it
        # one text hash per item (item order), for serving's lookup of a known text; ~70 MB of JSON at 1M items
        (out / "text_sha256.json").write_text(json.dumps([text_sha(t) for t in texts]) + "\n")
    shutil.rmtree(shards[0]["dir"], ignore_errors=True)
    return manifest


def embed(name: str, cfg: Config, progress: bool = False) -> dict[str, Any]:
    """Embed every item of data/processed/NAME in this process, flow.workers shards at a time in threads (the
    flow maps the same shards over its task runner; the same plan gives the same bytes); returns the manifest."""
    from concurrent.futures import ThreadPoolExecutor

    before = torch_threads()
    try:
        with ThreadPoolExecutor(cfg.flow.workers) as pool:
            shards = list(pool.map(lambda s: embed_shard(name, cfg, s, progress), plan(name, cfg)))
    finally:
        set_task_threads(before)
    return join(name, cfg, shards)
