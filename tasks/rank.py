"""Rank step: load two-task ranking data (ml-100k: interact + like, with the item's semantic-ID codes;
Ali-CCP / AliExpress samples: click + conversion), train the configured multi-task ranker (DTN, MMoE,
shared-bottom) with early stopping on mean validation AUC, write data/rank/NAME/<model>/.

Outputs: model.safetensors, ranker.json (what to rebuild it from + history), metrics.json (test AUC per task).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from semid.models.params import RankerParams
from semid.models.ranking import RankData, aucs_on_test, frame_tasks, make_ranker, movielens_tasks, train_ranker
from semid.models.semantic_ids import load_codebook
from semid.models.training import NonFiniteTraining
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError

CSV_SAMPLES = {"ali-ccp-sample": ["click", "purchase"], "aliexpress-sample": ["click", "conversion"]}


def rank_data(name: str, cfg: Config, rc: RankerParams, codebook: Path | None = None) -> RankData:
    """The two-task data for NAME: ml-100k (processed tables + optional semantic IDs) or a CSV sample."""
    if name in CSV_SAMPLES:
        if not cfg.data.mirror:
            raise PipelineError(f"{name} is read from the local mirror, but none is set.",
                                "set SEMID_DATA_MIRROR (or data.mirror) to the shared datasets folder.")
        files = sorted((Path(cfg.data.mirror) / name).glob("*.csv"))
        if not files:
            raise PipelineError(f"No CSV files in {Path(cfg.data.mirror) / name}.",
                                "point --mirror at ../shared/datasets.")
        split_of = {f: "valid" if "val" in f.stem else "test" if "test" in f.stem else "train" for f in files}
        return frame_tasks({split_of[f]: pd.read_csv(f) for f in files}, CSV_SAMPLES[name])
    tables = layout.load_processed(cfg, name)
    if "users" not in tables or "rating" not in tables["interactions"]:
        raise PipelineError(f"The ranker needs ratings and user features; {name} has no users table or ratings.",
                            "use ml-100k (or the Ali-CCP / AliExpress samples).")
    sid = None
    if rc.semantic_features:
        quantizer, sid = load_codebook(layout.require_codebook(codebook or layout.semantic_dir(cfg, name)))
        sid = sid[:, : quantizer.levels]
    return movielens_tasks(tables, rc, sid, cfg.quantizer.codebook_size)


def rank(name: str, cfg: Config, codebook: Path | None = None) -> dict[str, Any]:
    """Train the configured ranker on NAME (ml-100k, or ali-ccp-sample / aliexpress-sample from the mirror)."""
    rc = cfg.ranker
    data = rank_data(name, cfg, rc, codebook)
    model = make_ranker(data, rc)
    try:
        summary = train_ranker(model, data, rc)
    except NonFiniteTraining as err:
        raise PipelineError(f"Training the {rc.model} ranker on {name} diverged: {err}; nothing was saved.",
                            "lower ranker.lr or check the input features for NaN.") from None
    metrics = {**aucs_on_test(model, data), "seconds_per_epoch": summary["seconds_per_epoch"],
               "epochs": summary["epochs"]}
    info = {"dataset": name, "model": rc.model, "tasks": data.tasks, "fields": data.cat_fields + data.bag_fields
            + data.dense_fields, "rows": {k: len(v["labels"]) for k, v in data.splits.items()},
            "params": sum(p.numel() for p in model.parameters()), "config": rc.model_dump(mode="json"),
            "best_valid_mean_auc": summary["best_valid"], "history": summary["history"]}
    layout.write_model_dir(layout.rank_dir(cfg, name, rc.model), model.state_dict(),
                           {"ranker.json": info, "metrics.json": metrics})
    return {**info, "metrics": metrics}


def reevaluate_ranker(name: str, model_name: str, cfg: Config) -> dict[str, Any]:
    """Rebuild the saved ranker (same seeded data) and compute its test AUC per task again."""
    folder = layout.rank_dir(cfg, name, model_name)
    info, state = layout.read_model_dir(folder, "ranker.json", PipelineError(
        f"No trained {model_name} ranker in {folder}.", f"run `semid train {name} --model {model_name}` first."))
    rc = RankerParams.model_validate(info["config"])
    data = rank_data(name, cfg, rc)
    model = make_ranker(data, rc)
    model.load_state_dict(state)
    return {**info, "metrics": {**aucs_on_test(model, data), "epochs": len(info["history"]),
                                "seconds_per_epoch": float("nan")}}
