"""Recommend step: load the processed interactions (and the codebook), train the configured sequential
recommender with early stopping, evaluate it on every protocol, write data/recommend/NAME/.

Outputs: model.safetensors, recommender.json (what to rebuild it from + results), metrics.json (every number,
flat, for MLflow), summary.json (test Recall/NDCG@10 on the configured protocol, history masked by default, and
NDCG@10 unmasked, for `dvc metrics show`), history.json (per epoch, for `dvc plots`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from semid.models.params import RecommendParams
from semid.models.semantic_ids import load_codebook
from semid.models.seqrec import (
    MostPopular,
    NotEnoughHistory,
    SequentialRecommender,
    Split,
    build_recommender,
    evaluate_all,
    flat_results,
    sequences,
)
from semid.models.seqrec import train as train_recommender
from semid.models.training import NonFiniteTraining
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError


def _load(name: str, cfg: Config, p: RecommendParams, codebook: Path | None):
    """Processed tables, item count, and (codes, quantizer, text) as the item representation needs them."""
    tables = layout.load_processed(cfg, name)
    n_items = int(tables["items"]["item_id"].max()) + 1
    quantizer = codes = text = None
    if p.item_repr != "id":
        quantizer, codes = load_codebook(layout.require_codebook(codebook or layout.semantic_dir(cfg, name)))
        if len(codes) != n_items:
            raise PipelineError(f"The codebook has IDs for {len(codes)} items but {name} has {n_items}.",
                                f"re-run `semid quantize {name}` on the current data.")
        if p.joint:
            if quantizer.method != "rqvae":
                raise PipelineError("recommend.joint=true trains the RQ-VAE inside the recommender, so it needs an "
                                    "rqvae codebook and the item embeddings.",
                                    "set quantizer.method=rqvae and run `semid quantize`.")
            text = layout.load_embeddings(cfg, name)
    return tables, n_items, (codes, quantizer, text)


def _split(tables: dict, n_items: int, p: RecommendParams) -> Split:
    try:
        return Split(sequences(tables["interactions"]), n_items, p.negatives, p.seed, p.eval_users)
    except NotEnoughHistory:
        raise PipelineError("No user has 3 or more interactions, so there is nothing to train and evaluate on.",
                            "use a dataset with longer histories (data.min_user_interactions >= 3).") from None


def split_and_model(name: str, cfg: Config, p: RecommendParams, codebook: Path | None = None
                    ) -> tuple[Split, SequentialRecommender]:
    """NAME's train/valid/test split and an untrained recommender for params `p` (codebook as in `recommend`)."""
    tables, n_items, parts = _load(name, cfg, p, codebook)
    return _split(tables, n_items, p), build_recommender(n_items, p, *parts)


def recommend(name: str, cfg: Config, codebook: Path | None = None, out: Path | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train + evaluate the configured recommender on dataset NAME; `codebook` defaults to data/semantic/NAME."""
    p = cfg.recommend
    split, model = split_and_model(name, cfg, p, codebook)
    n_items = split.n_items
    try:
        summary = train_recommender(model, split, p, on_epoch)
    except NonFiniteTraining as err:
        raise PipelineError(f"Training the recommender on {name} diverged: {err}; nothing was saved.",
                            "lower recommend.lr or check the inputs (item embeddings, codebook) for NaN.") from None
    results = evaluate_all(model, split, p)
    most_popular = MostPopular(split)  # the trivial baseline the gate asks it to beat, and serving's fallback
    popular = evaluate_all(most_popular, split, p)
    metrics = {**flat_results(results), **{f"baseline_{k}": v for k, v in flat_results(popular).items()},
               "seconds_per_epoch": summary["seconds_per_epoch"], "epochs": summary["epochs"],
               "best_epoch": summary["best_epoch"]}
    info = {"dataset": name, "model": p.model, "item_repr": p.item_repr, "joint": p.joint, "n_items": n_items,
            "users": len(split.seqs), "dim": model.items.dim, "params": sum(x.numel() for x in model.parameters()),
            "config": p.model_dump(mode="json"), "codebook": None if codebook is None else str(codebook),
            "monitor": summary["monitor"], "best_valid": summary["best_valid"], "results": results,
            "most_popular": popular}
    protocol = "full_masked" if p.mask_history else "full"  # the configured protocol; unmasked NDCG beside it
    headline = {"R@10": round(metrics[f"test_{protocol}_recall@10"], 5),
                "N@10": round(metrics[f"test_{protocol}_ndcg@10"], 5),
                "N@10_unmasked": round(metrics["test_full_ndcg@10"], 5)}
    layout.write_model_dir(out or layout.recommend_dir(cfg, name), model.state_dict(),
                           {"recommender.json": info, "metrics.json": metrics, "summary.json": headline,
                            "history.json": summary["history"],
                            "popularity.json": most_popular.scores.int().tolist()})
    return {**info, "metrics": metrics}


def reevaluate(name: str, cfg: Config, folder: Path | None = None) -> dict[str, Any]:
    """Rebuild the saved recommender of NAME from its recommender.json + weights and evaluate it again."""
    folder = folder or layout.recommend_dir(cfg, name)
    info, state = layout.read_model_dir(folder, "recommender.json", PipelineError(
        f"No trained recommender in {folder}.", f"run `semid train {name}` first."))
    p = RecommendParams.model_validate(info["config"])
    split, model = split_and_model(name, cfg, p, Path(info["codebook"]) if info.get("codebook") else None)
    model.load_state_dict(state)
    return {**info, "results": evaluate_all(model, split, p)}
