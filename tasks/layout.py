"""The data layout: every path under data.root and every loader of a step's outputs, in one place.

data/raw/NAME (fetched snapshot), snapshots/NAME.json (its file list), processed/NAME (validated tables),
features/NAME (embeddings), shards/STAGE/NAME (a sharded stage's shard files until they are joined),
semantic/NAME (quantizer, codes, IDs, diagnostics, gate report), recommend/NAME and rank/NAME/MODEL (trained
models), quarantine/NAME/<UTC time> (rejected batches), runs/NAME.json (flow summaries).
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.fsutil import sha256_file, staged_dir


def root(cfg: Config) -> Path:
    return Path(cfg.data.root)


def raw_dir(cfg: Config, name: str) -> Path:
    return root(cfg) / "raw" / name


def snapshot_manifest(cfg: Config, name: str) -> Path:
    return root(cfg) / "snapshots" / f"{name}.json"


def processed_dir(cfg: Config, name: str) -> Path:
    return root(cfg) / "processed" / name


def features_dir(cfg: Config, name: str) -> Path:
    return root(cfg) / "features" / name


def semantic_dir(cfg: Config, name: str) -> Path:
    return root(cfg) / "semantic" / name


def recommend_dir(cfg: Config, name: str) -> Path:
    return root(cfg) / "recommend" / name


def rank_dir(cfg: Config, name: str, model: str) -> Path:
    return root(cfg) / "rank" / name / model


def run_summary(cfg: Config, name: str) -> Path:
    return root(cfg) / "runs" / f"{name}.json"


def shards_dir(cfg: Config, stage: str, name: str) -> Path:
    """A sharded stage's per-shard files, from its tasks until they are joined into its output (then removed)."""
    return root(cfg) / "shards" / stage / name


def local_inputs(cfg: Config) -> list[Path] | None:
    """The user's source files (globs expanded); None for SQL sources, which are re-read every run."""
    local = cfg.data.local
    if local is None or local.items is None:
        return None
    return [Path(p) for pattern in (local.items, local.interactions) for p in sorted(glob.glob(pattern))]


# ----------------------------------------------------------------------------- raw snapshots


def snapshot_files(cfg: Config, name: str) -> dict[str, str]:
    """Every file of data/raw/NAME (relative path) with its sha256."""
    folder = raw_dir(cfg, name)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def raw_hash(cfg: Config, name: str) -> str:
    """One sha256 over the raw snapshot's files (names + contents): the data version a run used."""
    h = hashlib.sha256()
    for rel, sha in snapshot_files(cfg, name).items():
        h.update(rel.encode())
        h.update(sha.encode())
    return h.hexdigest()


def quarantine(cfg: Config, name: str, report: dict[str, Any], text: str, src: Path | None = None) -> Path:
    """Copy a rejected raw batch plus the report into data/quarantine/NAME/<UTC time>/."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    qdir = root(cfg) / "quarantine" / name / stamp
    qdir.mkdir(parents=True, exist_ok=True)
    src = raw_dir(cfg, name) if src is None else src
    if src.exists():
        shutil.copytree(src, qdir / "raw")
    (qdir / "gx_result.json").write_text(json.dumps(report, indent=2, default=str))
    (qdir / "report.txt").write_text(text + "\n")
    return qdir


# ----------------------------------------------------------------------------- step outputs


def load_processed(cfg: Config, name: str) -> dict[str, pd.DataFrame]:
    folder = processed_dir(cfg, name)
    if not (folder / "items.parquet").exists():
        raise PipelineError(f"No processed data for '{name}' in {folder}.", f"run `semid data validate {name}`.")
    return {p.stem: pd.read_parquet(p) for p in folder.glob("*.parquet")}


def load_stats(cfg: Config, name: str) -> dict[str, Any]:
    path = processed_dir(cfg, name) / "stats.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_embeddings(cfg: Config, name: str, mmap: bool = False) -> np.ndarray:
    """features/NAME/embeddings.npy, in memory or (mmap) memory-mapped read-only for streamed steps."""
    path = features_dir(cfg, name) / "embeddings.npy"
    if not path.exists():
        raise PipelineError(f"No embeddings for '{name}' at {path}.", f"run `semid embed {name}` first.")
    return np.load(path, mmap_mode="r" if mmap else None)


def require_codebook(folder: Path) -> Path:
    """A quantize output folder that holds semantic IDs (read it with semid.models.semantic_ids.load_codebook)."""
    if not (folder / "ids.parquet").exists():
        raise PipelineError(f"No semantic IDs in {folder}.", "run `semid quantize DATASET` first.")
    return folder


def write_run_summary(cfg: Config, summary: dict[str, Any]) -> Path:
    """runs/NAME.json: a flow run's summary without the (large) diagnostics."""
    out = run_summary(cfg, summary["dataset"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: v for k, v in summary.items() if k != "diagnostics"}, indent=2, default=str))
    return out


def write_model_dir(target: Path, state: dict[str, Any], files: dict[str, Any]) -> None:
    """A trained model folder, all or nothing: model.safetensors + one JSON file per entry of `files`."""
    from safetensors.torch import save_file

    with staged_dir(target) as folder:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        for fname, content in files.items():
            (folder / fname).write_text(json.dumps(content, indent=2) + "\n")


def read_model_dir(folder: Path, info_file: str, missing: PipelineError) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the folder's info JSON, its weights); raises `missing` when the folder holds no trained model."""
    from safetensors.torch import load_file

    if not (folder / info_file).exists():
        raise missing
    return json.loads((folder / info_file).read_text()), load_file(str(folder / "model.safetensors"))
