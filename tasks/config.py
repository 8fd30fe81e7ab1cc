"""One typed configuration for the whole pipeline, read from params.yaml with per-key overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocalSource(_Strict):
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


class DataConfig(_Strict):
    dataset: str = "ml-100k"
    root: str = "data"
    mirror: str | None = None
    min_user_interactions: int = Field(5, ge=1)
    min_text_coverage: float = Field(0.95, ge=0.0, le=1.0)
    dvc_remote: str | None = None
    local: LocalSource | None = None

    @model_validator(mode="after")
    def _mirror_from_env(self) -> DataConfig:
        env = os.environ.get("SEMID_DATA_MIRROR")
        if env and not self.mirror:
            object.__setattr__(self, "mirror", env)
        return self


class EmbedConfig(_Strict):
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)
    max_items: int | None = Field(None, ge=1)
    cache_dir: str | None = None  # default: ~/.cache/semid/embeddings


Distance = Literal["cosine", "euclidean"]


class QuantizerConfig(_Strict):
    method: Literal["rqvae", "rqkmeans", "drq"] = "rqvae"
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    dim: int = Field(64, ge=2)
    distances: list[Distance] = Field(default_factory=lambda: ["cosine", "cosine", "euclidean"])
    hidden: list[int] = Field(default_factory=lambda: [512, 256])
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(1024, ge=8)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.99, gt=0, lt=1)
    dead_code_threshold: int = Field(2, ge=0)
    collapse_active: float = Field(0.5, ge=0, le=1)  # rqvae: a level using fewer codes than this share = collapsed
    collapse_restarts: int = Field(2, ge=0)  # rqvae: collapsed fits are trained again from seed + 1, seed + 2, ...
    kmeans_iters: int = Field(100, ge=1)
    kl_weight: float = Field(1e-4, ge=0)
    contrastive_weight: float = Field(0.0, ge=0)
    cooccurrence_window: int = Field(3, ge=1)
    collision: Literal["dedup_level", "reassign"] = "reassign"
    seed: int = 0

    @model_validator(mode="after")
    def _distances_match_levels(self) -> QuantizerConfig:
        if len(self.distances) != self.levels:
            # a shorter list is extended with its last entry: [cos, euc] on 4 levels -> cos, euc, euc, euc
            if 0 < len(self.distances) < self.levels:
                object.__setattr__(
                    self, "distances", self.distances + [self.distances[-1]] * (self.levels - len(self.distances))
                )
            else:
                raise ValueError(
                    f"quantizer.distances has {len(self.distances)} entries but quantizer.levels is {self.levels}"
                )
        return self


class DiagnoseConfig(_Strict):
    rho: float = Field(0.5, gt=0)
    mc_samples: int = Field(64, ge=1)
    seed: int = 0


class RecommendConfig(_Strict):
    """SASRec next-item recommender trained on the promoted codebook's semantic IDs."""

    item_repr: Literal["id", "semantic", "unified"] = "unified"
    joint: bool = False  # train the RQ-VAE inside the recommender (rec + reconstruction + commitment loss)
    loss: Literal["ce", "bce"] = "ce"
    id_dim: int = Field(64, ge=1)  # ID embedding size in `id` mode
    unified_id_dim: int = Field(8, ge=1)  # ID part of the unified item vector
    unified_id_scale: float = Field(1.0, gt=0)  # multiplies that ID part: its init and its effective learning rate
    freeze_codebooks: bool = False
    max_len: int = Field(50, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)
    monitor: Literal["ndcg@10", "recall@10", "mrr"] = "ndcg@10"
    mask_history: bool = True  # early-stopping metric on masked full ranking; both variants are reported
    negatives: int = Field(99, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = 0


class RankerConfig(_Strict):
    """Multi-task ranker (DTN / MMoE / shared-bottom) on two tasks: interact and like."""

    model: Literal["dtn", "mmoe", "shared-bottom"] = "dtn"
    embed_dim: int = Field(8, ge=2)
    module_dim: int = Field(32, ge=4)
    experts: int = Field(4, ge=1)  # MMoE experts
    tower: list[int] = Field(default_factory=lambda: [128, 64])
    neg_ratio: int = Field(1, ge=1)  # sampled unrated pairs per rated pair (interact task)
    like_threshold: int = Field(4, ge=1)
    task_weights: list[float] = Field(default_factory=lambda: [1.0, 1.0])
    semantic_features: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2048, ge=1)
    epochs: int = Field(30, ge=1)
    patience: int = Field(3, ge=1)
    seed: int = 0


class GateConfig(_Strict):
    """Quality gate: absolute thresholds plus no regression against the current champion."""

    min_k_eff_ratio: float = Field(0.3, ge=0, le=1)  # K_eff / K per level (Monte-Carlo kernel)
    min_active_share: float = Field(0.9, ge=0, le=1)
    max_duplicate_rate: float = Field(0.05, ge=0, le=1)  # before collision resolution
    max_recon_mse: float = Field(0.01, gt=0)
    k_eff_tolerance: float = Field(0.1, ge=0, le=1)  # relative K_eff drop allowed vs the champion
    duplicate_tolerance: float = Field(0.01, ge=0, le=1)  # absolute duplicate-rate rise allowed vs the champion
    max_id_churn: float = Field(1.0, ge=0, le=1)  # share of known items whose semantic ID may change
    min_valid_ndcg: float = Field(0.0, ge=0, le=1)
    ndcg_tolerance: float = Field(0.005, ge=0, le=1)  # absolute valid NDCG@10 drop allowed vs the champion


class TrackingConfig(_Strict):
    tracking_uri: str | None = None  # default: sqlite:///<project>/mlflow/mlflow.db, artifacts in mlflow/artifacts
    experiment: str = "semid-retrain"
    codebook_model: str = "semid-codebook"
    recommender_model: str = "semid-recommender"


class FlowConfig(_Strict):
    mode: Literal["retrain", "incremental"] = "retrain"  # incremental: encode new items with the champion codebook
    train_recommender: bool = True
    retries: int = Field(2, ge=0)  # for the I/O steps (fetch, register)


class Config(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    quantizer: QuantizerConfig = Field(default_factory=QuantizerConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    ranker: RankerConfig = Field(default_factory=RankerConfig)
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
