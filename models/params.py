"""Typed parameters of every model (pydantic): the one place their defaults live.

The pipeline config (semid.tasks.config) composes these sections, params.yaml sets them (a test checks that it
equals these defaults), and each model takes its parameter object as is: no untyped bags, no second default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from semid.models.registry import KINDS

Distance = Literal["cosine", "euclidean"]
Beta = Annotated[float, Field(ge=0, lt=1)]


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def registered(kind: str) -> type[str]:
    """A str type that must be a name models.registry knows for `kind`."""

    def check(value: str) -> str:
        if value not in KINDS[kind]:
            raise ValueError(f"unknown {kind} '{value}': use one of {', '.join(KINDS[kind])}")
        return value

    return Annotated[str, AfterValidator(check)]


class QuantizerParams(Strict):
    """A residual quantizer (RQ-KMeans, RQ-VAE or DRQ) and how its IDs are made unique."""

    method: registered("quantizer") = "rqvae"
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    dim: int = Field(64, ge=2)  # latent size (RQ-VAE, DRQ)
    distances: list[Distance] = Field(default_factory=lambda: ["cosine", "cosine", "euclidean"])
    hidden: list[int] = Field(default_factory=lambda: [512, 256])
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(1024, ge=8)
    min_batches: int = Field(8, ge=1)  # rqvae: smaller batches on small catalogues, >= this many steps an epoch
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(1.0, ge=0)  # commitment weight
    ema_decay: float = Field(0.99, gt=0, lt=1)
    dead_code_threshold: int = Field(2, ge=0)
    collapse_active: float = Field(0.5, ge=0, le=1)  # rqvae: a level using fewer codes than this share = collapsed
    collapse_restarts: int = Field(2, ge=0)  # rqvae: collapsed fits are trained again from seed + 1, seed + 2, ...
    kmeans_iters: int = Field(100, ge=1)
    fit_sample: int | None = Field(100_000, ge=1)  # fit on a seeded sample of this many items (null: all)
    kmeans: Literal["faiss", "torch"] = "faiss"  # k-means of RQ-KMeans and DRQ (the RQ-VAE init stays on torch)
    kl_weight: float = Field(1e-4, ge=0)  # drq
    contrastive_weight: float = Field(0.0, ge=0)  # drq: InfoNCE on co-occurring items
    cooccurrence_window: int = Field(3, ge=1)
    collision: Literal["dedup_level", "reassign"] = "reassign"
    seed: int = 0

    def fit_batch(self, n: int) -> int:
        """The RQ-VAE batch size for n training items: batch_size, or smaller so that an epoch has at least
        min_batches optimizer steps. At batch 1024 ml-100k's 1,682 items gave 2 steps an epoch, 400 in all: the
        autoencoder barely beat predicting the mean (reconstruction 0.94x the mean's MSE) and 3 of 3 seeds failed the
        default gate on code usage; at 8 steps an epoch it reached 0.64x and passed (2026-12-04)."""
        return max(1, min(self.batch_size, -(-n // self.min_batches)))

    @model_validator(mode="after")
    def _distances_match_levels(self) -> QuantizerParams:
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


class DiagnoseParams(Strict):
    """Codebook diagnostics: sigma = rho x median nearest-codeword distance; Monte-Carlo samples per codeword."""

    rho: float = Field(0.5, gt=0)
    mc_samples: int = Field(64, ge=1)
    seed: int = 0


class RecommendParams(Strict):
    """A sequential recommender trained on the promoted codebook's semantic IDs, and its training."""

    model: registered("recommender") = "sasrec"
    item_repr: Literal["id", "semantic", "unified"] = "unified"
    joint: bool = False  # train the RQ-VAE inside the recommender (rec + reconstruction + commitment loss)
    loss: Literal["ce", "bce", "sampled"] = "ce"  # full softmax | 1 negative per position | sampled softmax
    train_negatives: int = Field(256, ge=1)  # sampled: negatives per batch (shared) or per position
    negatives_per: Literal["batch", "position"] = "batch"  # sampled: one shared draw per batch | RecTools' per position
    negative_sampling: Literal["uniform", "popularity"] = "uniform"  # sampled: q(item) uniform or train frequency
    logq: bool = True  # sampled: subtract log(K q(item)) from every logit (the sampling correction)
    id_dim: int = Field(64, ge=1)  # ID embedding size in `id` mode
    unified_id_dim: int = Field(8, ge=1)  # ID part of the unified item vector
    unified_id_scale: float = Field(4.0, gt=0)  # multiplies that ID part: its init and its effective learning rate
    freeze_codebooks: bool = False
    max_len: int = Field(50, ge=2)
    every_window: bool = False  # train on every max_len window of long histories, not only the last
    batching: Literal["length", "shuffled"] = "length"  # batches of equal-length sequences | users shuffled (RecTools)
    positions: Literal["forward", "backward"] = "forward"  # SASRec positions from the first or from the last item
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    block: Literal["pre_ln", "post_ln", "sasrec"] = "pre_ln"  # norm placement; post_ln: RecBole, sasrec: RecTools
    init: Literal["normal", "xavier"] = "normal"  # xavier: RecTools' init (every matrix, ID table unscaled at input)
    pad_keys: bool = False  # block sasrec: queries also attend to the left-pad slots, as RecTools' SASRec does
    ffn_dim: int | None = Field(None, ge=1)  # feed-forward width of each block; null: the item dimension
    activation: Literal["relu", "gelu"] = "relu"  # feed-forward activation (RecBole's SASRec: gelu)
    position_std: float = Field(0.02, gt=0)  # init std of the position table (items start at 0.02 x sqrt(d))
    dropout: float = Field(0.5, ge=0, lt=1)
    table_dropout: float = Field(0.0, ge=0, lt=1)  # on the item table in training, input and candidates (RecTools)
    lr: float = Field(3e-3, gt=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)  # Adam's (beta1, beta2); the public strong recipe uses (0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(50, ge=1)
    patience: int = Field(10, ge=1)
    min_epochs: int = Field(0, ge=0)  # never stop before this many epochs
    smoothing: float = Field(0.8, ge=0, lt=1)  # EMA weight of the past in the early-stopping score (0: raw score)
    monitor: Literal["ndcg@10", "recall@10", "mrr"] = "ndcg@10"
    mask_history: bool = True  # early-stopping metric on masked full ranking; both variants are reported
    negatives: int = Field(99, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    eval_users: int | None = Field(None, ge=1)  # validate/test on a seeded sample of this many users; null: all
    seed: int = 0


class RankerParams(Strict):
    """A multi-task ranker (DTN / MMoE / shared-bottom) on two tasks, and its training."""

    model: registered("ranker") = "dtn"
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
