"""The registered models' pyfunc classes: load the logged artefacts, call semid.models, answer requests.

This module and semid/models/ are all the code a registered model ships (tracking.serving_code), and the model
is logged as code (MLflow models-from-code: a two-line file that builds the class below), so loading a champion
runs this code and unpickles nothing; weights are safetensors, settings JSON.
- CodebookModel: rows with `embedding` (floats) or `text`, optionally `source_id` -> semantic_id, code_0.., is_new.
  A catalogue item (its source_id, or its exact text) gets the ID it was registered with, the one the
  recommender was trained on; a new item gets the nearest ID no catalogue item holds. A new item's text is
  encoded by the encoder identity the catalogue was embedded with (onnx-int8: the registered model file).
- RecommenderModel: rows with `history` (source item ids, oldest first), optional `k` (default 10) and
  `mask_history` (default true) -> recommendations (top-k source ids, the history excluded), unknown (history
  ids not in the catalogue, ignored), fallback ("most_popular" when no known history item is left, else "").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

import mlflow

DEFAULT_K = 10


class CodebookModel(mlflow.pyfunc.PythonModel):
    """pyfunc: embedding/text (+ optional source_id) -> the registered semantic ID, or a free one marked new."""

    def load_context(self, context) -> None:
        from semid.models.semantic_ids import code_columns, load_codebook

        folder = Path(context.artifacts["codebook"])
        self.quantizer, self.registered = load_codebook(folder)
        self.ids = ids = pd.read_parquet(folder / "ids.parquet").sort_values("item_id")
        self.columns = code_columns(ids)
        self.by_source = dict(zip(ids["source_id"].astype(str), range(len(ids)), strict=True))
        texts = json.loads(Path(context.artifacts["texts"]).read_text())  # one hash per item, item order
        if isinstance(texts, dict):  # registered before 2026-12-04: the whole embed manifest
            texts = texts["text_sha256"]
        self.by_text = {sha: row for row, sha in enumerate(texts[: len(ids)])}
        self.meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.onnx = Path(context.artifacts["onnx"]) if "onnx" in context.artifacts else None
        if self.meta.get("embed_backend") == "onnx-int8" and (
                self.onnx is None or hashlib.sha256(self.onnx.read_bytes()).hexdigest() != self.meta["onnx_sha256"]):
            raise ValueError("this codebook was built on int8 ONNX embeddings but its 'onnx' artefact is missing or "
                             "not the file recorded at registration; register the codebook again (semid run).")
        self._encoder = None

    def _vectors(self, frame: pd.DataFrame) -> np.ndarray:
        if "embedding" in frame:
            return np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]])
        if self._encoder is None:
            self._encoder = self._load_encoder()
        return self._encoder.encode(frame["text"].astype(str).tolist(), convert_to_numpy=True)

    def _load_encoder(self):
        """The encoder identity the catalogue was embedded with: torch serves torch and onnx fp32 (same vectors,
        semid.models.encoder.encoder_id); onnx-int8 runs the registered int8 file, on a CPU with the same class of
        int8 kernels as the one that embedded the catalogue (another class gives other vectors, so other codes)."""
        from semid.models.encoder import encoder_id, load_encoder

        if self.meta.get("embed_backend") == "onnx-int8":
            here = encoder_id(self.meta["encoder"], "onnx-int8")
            if self.meta.get("encoder_identity") != here:
                raise ValueError(
                    f"this codebook's catalogue was embedded by int8 encoder "
                    f"'{self.meta.get('encoder_identity', 'unrecorded (registered before 2026-12-05)')}', but this "
                    f"machine's int8 kernels make it '{here}', whose vectors differ, so new texts would get codes the "
                    "catalogue's encoder would not give. Serve it on a CPU of the recorded class, or embed and "
                    "register the catalogue here (semid run), or use embed.backend=onnx (fp32: the same vectors on "
                    "every CPU).")
        st = load_encoder(self.meta["encoder"])
        if self.meta.get("embed_backend") != "onnx-int8":
            return st
        import torch

        from semid.models.onnx_encoder import OnnxEncoder

        return OnnxEncoder(st, self.onnx, torch.get_num_threads())

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from semid.models.semantic_ids import assign_new, sid_strings

        if "embedding" not in model_input and "text" not in model_input:
            raise ValueError("input needs an 'embedding' or a 'text' column (and optionally 'source_id')")
        rows = np.full(len(model_input), -1)
        if "source_id" in model_input:
            rows = np.array([self.by_source.get(str(s), -1) for s in model_input["source_id"]])
        if "text" in model_input:
            shas = [hashlib.sha256(str(t).encode("utf-8")).hexdigest() for t in model_input["text"]]
            rows = np.where(rows >= 0, rows, [self.by_text.get(sha, -1) for sha in shas])
        ids = np.zeros((len(model_input), self.registered.shape[1]), dtype=np.int64)
        known = rows >= 0
        ids[known] = self.registered[rows[known]]
        if (~known).any():
            ids[~known] = assign_new(self.quantizer, self._vectors(model_input[~known]), self.registered)
        return pd.DataFrame({"semantic_id": sid_strings(ids), **{c: ids[:, i] for i, c in enumerate(self.columns)},
                             "is_new": ~known})


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: history (+ k, mask_history) -> top-k source item ids, unknown ids, popularity fallback flag."""

    def load_context(self, context) -> None:
        import torch
        from safetensors.torch import load_file

        from semid.models.params import RecommendParams
        from semid.models.semantic_ids import load_codebook
        from semid.models.seqrec import build_recommender

        folder = Path(context.artifacts["recommender"])
        info = json.loads((folder / "recommender.json").read_text())
        p = RecommendParams.model_validate(info["config"])
        quantizer = codes = None
        if "codebook" in context.artifacts:
            quantizer, codes = load_codebook(Path(context.artifacts["codebook"]))
        items = pd.read_parquet(context.artifacts["items"]).sort_values("item_id")
        text = np.load(context.artifacts["embeddings"]) if p.joint and "embeddings" in context.artifacts else None
        self.model = build_recommender(info["n_items"], p, codes, quantizer, text)
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.model.eval()
        with torch.no_grad():  # the item table is fixed once served: build it once, not per request
            self.table, _ = self.model.items()
        self.max_len, self.torch = p.max_len, torch
        self.source = items["source_id"].astype(str).to_numpy()
        self.index = dict(zip(self.source, items["item_id"], strict=True))
        self.popularity = torch.tensor(json.loads((folder / "popularity.json").read_text()), dtype=torch.float32)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from semid.models.seqrec import pad

        if "history" not in model_input:
            raise ValueError("input needs a 'history' column: a list of source item ids per row")
        histories = [list(h) if isinstance(h, list | tuple | np.ndarray) else [] for h in model_input["history"]]
        ks = [int(k) if pd.notna(k) else DEFAULT_K for k in model_input.get("k", [DEFAULT_K] * len(histories))]
        masks = [bool(m) for m in model_input.get("mask_history", [True] * len(histories))]
        seqs = [np.array([self.index[str(s)] for s in h if str(s) in self.index], dtype=np.int64) for h in histories]
        fallback = np.array([len(s) == 0 for s in seqs])
        scores = self.popularity.expand(len(seqs), -1).clone()
        if (~fallback).any():
            rows = np.flatnonzero(~fallback)
            seq, lengths = pad([seqs[i] for i in rows], self.max_len)
            scores[rows] = self.model.score(seq, lengths, self.table)
        for row, (s, mask) in enumerate(zip(seqs, masks, strict=True)):
            if mask and len(s):
                scores[row, s] = float("-inf")
        top = self.torch.topk(scores, min(max(ks), scores.shape[1]), dim=1).indices.numpy()
        return pd.DataFrame({
            "recommendations": [list(self.source[row[:k]]) for row, k in zip(top, ks, strict=True)],
            "unknown": [[str(x) for x in h if str(x) not in self.index] for h in histories],
            "fallback": np.where(fallback, "most_popular", ""),
        })
