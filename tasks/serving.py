"""The registered models' pyfunc classes: load the logged artefacts, call semid.models, answer requests.

This module and semid/models/ are all the code a registered model ships (see tracking.serving_code): it imports
nothing else of the project.
- CodebookModel: DataFrame with `embedding` (list of floats) or `text` -> semantic IDs from the codebook.
- RecommenderModel: DataFrame with `history` (list of source item ids, oldest first) and an optional `k` column
  (default 10) -> top-k source item ids per row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import mlflow


class CodebookModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with `embedding` (list of floats) or `text` -> semantic IDs from the codebook."""

    def load_context(self, context) -> None:
        from semid.models.quantizer import Quantizer

        self.quantizer = Quantizer.load(context.artifacts["quantizer"])
        self.ids = pd.read_parquet(context.artifacts["ids"])
        self.meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self._encoder = None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from semid.models.semantic_ids import sid_strings

        if "embedding" in model_input:
            x = np.stack([np.asarray(v, dtype=np.float32) for v in model_input["embedding"]])
        elif "text" in model_input:
            if self._encoder is None:
                from semid.models.encoder import load_encoder

                self._encoder = load_encoder(self.meta["encoder"])
            x = self._encoder.encode(model_input["text"].astype(str).tolist(), convert_to_numpy=True)
        else:
            raise ValueError("input needs an 'embedding' or a 'text' column")
        codes = self.quantizer.encode(x)
        return pd.DataFrame({"semantic_id": sid_strings(codes),
                             **{f"code_{i}": codes[:, i] for i in range(codes.shape[1])}})


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with `history` (list of source item ids, oldest first) and an optional `k` column
    (default 10) -> top-k source item ids per row."""

    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file

        from semid.models.params import RecommendParams
        from semid.models.semantic_ids import load_codebook
        from semid.models.seqrec import build_recommender

        info = json.loads(Path(context.artifacts["recommender"], "recommender.json").read_text())
        p = RecommendParams.model_validate(info["config"])
        quantizer = codes = None
        if "codebook" in context.artifacts:
            quantizer, codes = load_codebook(Path(context.artifacts["codebook"]))
        self.items = pd.read_parquet(context.artifacts["items"]).sort_values("item_id")
        text = None
        if p.joint and "embeddings" in context.artifacts:
            text = np.load(context.artifacts["embeddings"])
        self.model = build_recommender(info["n_items"], p, codes, quantizer, text)
        self.model.load_state_dict(load_file(str(Path(context.artifacts["recommender"], "model.safetensors"))))
        self.model.eval()
        self.max_len = p.max_len
        self.index = dict(zip(self.items["source_id"].astype(str), self.items["item_id"], strict=True))
        self.torch = torch

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from semid.models.seqrec import pad

        k = int(model_input["k"].iloc[0]) if "k" in model_input else 10
        seqs = [np.array([self.index[str(s)] for s in hist if str(s) in self.index], dtype=np.int64)
                for hist in model_input["history"]]
        seq, lengths = pad([s if len(s) else np.array([0]) for s in seqs], self.max_len)
        scores = self.model.score(seq, lengths)
        top = self.torch.topk(scores, k, dim=1).indices.numpy()
        source = self.items["source_id"].astype(str).to_numpy()
        return pd.DataFrame({"recommendations": [list(source[row]) for row in top]})
