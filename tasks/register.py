"""Register step: log a candidate (codebook or recommender) with its numbers and files into its MLflow step run
and register it as a new model version. Whether it is promoted is the gate step's decision.

Registered models: `semid-codebook` (pyfunc: item embedding or text in -> semantic ID out; the encoder is recorded,
and for onnx-int8 its model file shipped) and `semid-recommender` (pyfunc: item history in -> top-k items out), see
semid.tasks.serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError
from semid.tasks.tracking import Tracker, log_and_register, model_name


def register_codebook(name: str, cfg: Config, tags: dict[str, str], parent: str) -> dict[str, Any]:
    """A new `semid-codebook` version from data/semantic/NAME, its diagnostics logged as the run's metrics."""
    sem = layout.semantic_dir(cfg, name)
    tracker = Tracker.attach(cfg, parent, tags)
    run_id = tracker.step("register-codebook", {"quantizer": cfg.quantizer.model_dump(mode="json"),
                                                "gate": cfg.gate.model_dump(mode="json")})
    tracker.metrics(run_id, json.loads((sem / "metrics.json").read_text()))
    for f in ("diagnostics.json", "metrics.json", "code_usage.png", "k_eff.png", "quantize.json"):
        tracker.artifacts(run_id, sem / f, "diagnostics")
    meta = sem / "codebook_meta.json"
    features = json.loads((layout.features_dir(cfg, name) / "manifest.json").read_text())
    texts = layout.features_dir(cfg, name) / "text_sha256.json"
    encoder = {"encoder": features["model"], "embed_backend": features["backend"],
               "encoder_identity": features["encoder"]}  # int8: names the CPU's int8 kernel class
    artifacts = {"codebook": str(sem), "meta": str(meta), "texts": str(texts)}
    if features["backend"] == "onnx-int8":  # serving encodes new texts with this very file (torch/fp32: the model)
        if not Path(features.get("onnx_model", "")).is_file():
            raise PipelineError(f"The int8 ONNX model that embedded '{name}' ({features.get('onnx_model')}) is gone, "
                                "so the codebook could not be served with the encoder that built it.",
                                f"run `semid embed {name}` again (it exports the model), then register.")
        artifacts["onnx"] = features["onnx_model"]
        encoder["onnx_sha256"] = features["onnx_sha256"]
    meta.write_text(json.dumps({**encoder, "dataset": name}) + "\n")
    version = log_and_register(cfg, run_id, model_name(cfg, "codebook", name), "CodebookModel", artifacts,
                               {**tags, **encoder, "dataset": name})
    return {"version": version, "run_id": run_id}


def register_recommender(name: str, cfg: Config, metrics: dict[str, Any], codebook: Path, tags: dict[str, str],
                         parent: str) -> dict[str, Any]:
    """A new `semid-recommender` version from data/recommend/NAME (+ the codebook it was trained on)."""
    folder = layout.recommend_dir(cfg, name)
    tracker = Tracker.attach(cfg, parent, tags)
    run_id = tracker.step("register-recommender", {"recommend": cfg.recommend.model_dump(mode="json")})
    tracker.metrics(run_id, metrics)
    tracker.artifacts(run_id, folder / "history.json", "training")
    tracker.artifacts(run_id, folder / "metrics.json", "training")
    artifacts = {"recommender": str(folder), "items": str(layout.processed_dir(cfg, name) / "items.parquet")}
    if cfg.recommend.item_repr != "id":
        artifacts["codebook"] = str(codebook)
    version = log_and_register(cfg, run_id, model_name(cfg, "recommender", name), "RecommenderModel", artifacts,
                               {**tags, "dataset": name, "item_repr": cfg.recommend.item_repr})
    return {"version": version, "run_id": run_id}
