"""One typed configuration for the whole pipeline, read from params.yaml with per-key overrides.

Pipeline sections (data, embed, gate, mlflow, flow) are defined here; model sections (quantizer, diagnose,
recommend, ranker) are the models' own typed parameters (semid.models.params). Every default lives in one of the
two, and params.yaml repeats them (a test checks it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from semid.models.params import DiagnoseParams, QuantizerParams, RankerParams, RecommendParams, Strict


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message names the key and the fix."""


class LocalSource(Strict):
    """The user's own data: files (path or glob) or SQL queries, with a column mapping."""

    items: str | None = None
    interactions: str | None = None
    database_url: str | None = None
    items_query: str | None = None
    interactions_query: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    timestamp_col: str | None = "timestamp"
    text_cols: list[str] = Field(default_factory=lambda: ["title"])
    checksums: dict[str, str] = Field(default_factory=dict)  # optional: source file name -> sha256

    @model_validator(mode="after")
    def _one_way_in(self) -> LocalSource:
        files = self.items is not None or self.interactions is not None
        sql = self.items_query is not None or self.interactions_query is not None
        if files and sql:
            raise ValueError("give either files (items/interactions) or SQL (items_query/interactions_query)")
        if files and not (self.items and self.interactions):
            raise ValueError("both data.local.items and data.local.interactions are needed")
        if sql and not (self.items_query and self.interactions_query and self.database_url):
            raise ValueError("SQL sources need database_url, items_query and interactions_query")
        return self


class DataConfig(Strict):
    dataset: str = Field("ml-100k", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a path and registry name part
    root: str = "data"
    mirror: str | None = None
    min_user_interactions: int = Field(5, ge=1)
    min_text_coverage: float = Field(0.95, ge=0.0, le=1.0)
    dvc_remote: str | None = None
    local: LocalSource | None = None
    # validate's engine. duckdb: out of core, parquet snapshots read in place, memory bounded by duckdb_memory_limit
    # (spilling to data.root/tmp); the same checks, messages and processed tables as pandas (tests/data)
    engine: Literal["pandas", "duckdb"] = "pandas"
    duckdb_memory_limit: str = Field("4GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    duckdb_threads: int | None = Field(None, ge=1)  # default: every CPU

    @model_validator(mode="after")
    def _mirror_from_env(self) -> DataConfig:
        env = os.environ.get("SEMID_DATA_MIRROR")
        if env and not self.mirror:
            object.__setattr__(self, "mirror", env)
        return self


class EmbedConfig(Strict):
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)
    max_items: int | None = Field(None, ge=1)
    cache_dir: str | None = None  # default: ~/.cache/semid/embeddings
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"  # onnx: torch's vectors (float rounding), int8: ~0.993
    onnx_dir: str | None = None  # the exported ONNX models; default: ~/.cache/semid/onnx
    onnx_threads: int | None = Field(None, ge=1)  # onnxruntime intra-op threads; default: torch.get_num_threads()
    # onnxruntime's CPU memory: plain (no arena) peaks ~24 % lower (2.1 vs 2.8 GB for 12k texts, 2 shard threads);
    # arena is ~1.2x faster (benchmarks/results/embed_memory.md)
    onnx_memory: Literal["plain", "arena", "arena-shrink"] = "plain"
    shard_size: int = Field(50_000, ge=1)  # items per embedding shard (one task each, .map-ped by the flow)


class GateConfig(Strict):
    """Quality gate: absolute thresholds, a trivial baseline to beat, no regression against the champion."""

    min_k_eff_ratio: float = Field(0.3, ge=0, le=1)  # K_eff / K per level (Monte-Carlo kernel)
    min_active_share: float = Field(0.85, ge=0, le=1)
    max_duplicate_rate: float = Field(0.05, ge=0, le=1)  # before collision resolution
    max_recon_ratio: float = Field(0.95, gt=0)  # reconstruction MSE / MSE of predicting the catalogue mean
    k_eff_tolerance: float = Field(0.1, ge=0, le=1)  # relative K_eff drop allowed vs the champion
    duplicate_tolerance: float = Field(0.01, ge=0, le=1)  # absolute duplicate-rate rise allowed vs the champion
    max_id_churn: float = Field(0.0, ge=0, le=1)  # incremental mode: share of known items whose ID may change
    min_lift_over_popularity: float = Field(0.1, ge=-1)  # recommender: valid metric >= most-popular x (1 + this)
    ndcg_tolerance: float = Field(0.005, ge=0, le=1)  # absolute valid NDCG@10 drop allowed vs the champion
    allow_missing_baseline: bool = False  # true: a champion without the compared metric is a warning, not a fail


class TrackingConfig(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<project>/mlflow/mlflow.db, artifacts in mlflow/artifacts
    experiment: str = "semid-retrain"
    codebook_model: str = "semid-codebook"  # registered per dataset as semid-codebook-<dataset>
    recommender_model: str = "semid-recommender"  # ... and semid-recommender-<dataset>
    lock_url: str | None = None  # the tracking server's PostgreSQL URL: a cross-host promotion lock


class FlowConfig(Strict):
    mode: Literal["retrain", "incremental"] = "retrain"  # incremental: encode new items with the champion codebook
    train_recommender: bool = True
    retries: int = Field(2, ge=0)  # for the I/O steps (fetch, register)
    task_runner: Literal["local", "dask"] = "local"  # what runs the flow's mapped shard tasks (semid.flows.engine)
    dask_address: str | None = None  # dask: an existing scheduler (tcp://host:8786); empty: a LocalCluster per run
    workers: int = Field(2, ge=1)  # shard tasks at once: threads (local) or LocalCluster worker processes (dask)
    threads_per_task: int | None = Field(None, ge=1)  # torch/onnxruntime/faiss threads a shard task uses;
    # default: CPUs // workers. The same number on every runner gives bit-identical shards.

    def task_threads(self) -> int:
        """The torch / onnxruntime / faiss threads of one shard task. Decided by the config, never by where the
        task lands (a Dask worker starts with OMP_NUM_THREADS=1), so one shard plan gives bit-identical shards on
        every runner."""
        return self.threads_per_task or max(1, (os.cpu_count() or 1) // self.workers)


class Config(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    quantizer: QuantizerParams = Field(default_factory=QuantizerParams)
    diagnose: DiagnoseParams = Field(default_factory=DiagnoseParams)
    recommend: RecommendParams = Field(default_factory=RecommendParams)
    ranker: RankerParams = Field(default_factory=RankerParams)
    gate: GateConfig = Field(default_factory=GateConfig)
    mlflow: TrackingConfig = Field(default_factory=TrackingConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)

    def digest(self) -> str:
        """Short stable hash of the effective configuration (for tags and cache keys)."""
        import hashlib
        import json

        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}': remove it or check the spelling (see params.yaml)")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params.yaml (missing file = defaults) and apply `key.sub=value` overrides."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None and Path(path).exists():
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}. Fix the file or restore it from git.") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (data:, quantizer:, ...)")
        tree = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' must look like section.key=value, e.g. quantizer.levels=4")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip())
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
