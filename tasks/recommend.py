"""Recommend step: leave-one-out split, SASRec training with early stopping, evaluation on both protocols.

Protocols: `full` (rank the target against every item; reported unmasked and with the user's history
masked, `full_masked`) and `sampled99` (target + 99 uniform negatives the user never interacted with, fixed
seed). Writes data/recommend/NAME/: model.safetensors, recommender.json, metrics.json (flat, for DVC/MLflow),
history.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from models.determinism import deterministic
from models.early_stopping import EarlyStopper
from models.metrics import rank_metrics, sample_negatives, target_ranks
from models.quantizer import Quantizer
from models.sasrec import ItemTable, JointRQ, SASRec
from tasks.config import Config, RecommendConfig
from tasks.errors import PipelineError
from tasks.fsutil import staged_dir

PROTOCOLS = ("full", "full_masked", "sampled99")


def recommend_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.data.root) / "recommend" / name


def sequences(interactions: pd.DataFrame) -> list[np.ndarray]:
    """Per-user chronological item sequences (0-based item ids), users in id order."""
    inter = interactions.sort_values(["user_id", "position"])
    return [g.to_numpy(np.int64) for _, g in inter.groupby("user_id", sort=True)["item_id"]]


def pad(seqs: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] of item index + 1 (0 = pad), keeping the last max_len items; lengths [B]."""
    t = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), t), dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        out[i, : len(s)] = s + 1
        lengths[i] = len(s)
    return torch.from_numpy(out), torch.from_numpy(lengths)


class Split:
    """Leave-one-out: last item = test target, second-to-last = validation target, the rest = training."""

    def __init__(self, seqs: list[np.ndarray], n_items: int, negatives: int = 99, seed: int = 0):
        keep = [s for s in seqs if len(s) >= 3]
        if not keep:
            raise PipelineError("No user has 3 or more interactions, so there is nothing to train and evaluate on.",
                                "use a dataset with longer histories (data.min_user_interactions >= 3).")
        self.seqs, self.n_items = keep, n_items
        self.train = [s[:-2] for s in keep]
        self.eval_inputs = {"valid": [s[:-2] for s in keep], "test": [s[:-1] for s in keep]}
        self.targets = {"valid": np.array([s[-2] for s in keep]), "test": np.array([s[-1] for s in keep])}
        self.negatives = {}
        if n_items - 1 - max(len(np.unique(s)) for s in keep) >= negatives:
            self.negatives = {split: sample_negatives(keep, n_items, negatives, seed + i, first_item=0)
                              for i, split in enumerate(("valid", "test"))}


def train_batches(train: list[np.ndarray], max_len: int, batch_size: int, gen: torch.Generator):
    """Shuffled (input, target) batches: input = items[:-1], target = items[1:], both right-padded.

    Users are grouped by sequence length (random order within equal lengths, batches shuffled), so a batch
    is padded to about its own length instead of max_len: most Amazon users have < 10 items."""
    usable = [s[-(max_len + 1):] for s in train if len(s) >= 2]
    noise = torch.rand(len(usable), generator=gen).numpy()
    order = np.lexsort((noise, [len(s) for s in usable]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in torch.randperm(len(batches), generator=gen).tolist():
        chunk = [usable[i] for i in batches[b]]
        inputs, _ = pad([s[:-1] for s in chunk], max_len)
        targets, _ = pad([s[1:] for s in chunk], max_len)
        yield inputs, targets


@torch.no_grad()
def evaluate(model: SASRec, split: Split, which: str, max_len: int, batch_size: int = 1024) -> dict[str, dict]:
    """Metrics per protocol for the 'valid' or 'test' targets, batched matrix scoring."""
    model.eval()
    table, _ = model.items()
    ranks: dict[str, list[torch.Tensor]] = {p: [] for p in PROTOCOLS}
    inputs, targets = split.eval_inputs[which], torch.from_numpy(split.targets[which])
    for start in range(0, len(inputs), batch_size):
        seq, lengths = pad(inputs[start:start + batch_size], max_len)
        tgt = targets[start:start + batch_size]
        scores = model.score(seq, lengths, table)
        ranks["full"].append(target_ranks(scores, tgt))
        history = torch.zeros_like(scores, dtype=torch.bool)
        for row, s in enumerate(inputs[start:start + batch_size]):
            history[row, torch.as_tensor(np.array(s))] = True
        ranks["full_masked"].append(target_ranks(scores, tgt, exclude=history))
        if split.negatives:
            neg = torch.from_numpy(split.negatives[which][start:start + batch_size])
            cand = torch.cat([tgt[:, None], neg], dim=1)
            ranks["sampled99"].append(target_ranks(scores.gather(1, cand), torch.zeros(len(tgt), dtype=torch.long)))
    return {p: rank_metrics(torch.cat(r)) for p, r in ranks.items() if r}


def build_model(n_items: int, rc: RecommendConfig, codes: np.ndarray | None = None,
                quantizer: Quantizer | None = None, text: np.ndarray | None = None) -> SASRec:
    torch.manual_seed(rc.seed)
    joint = None
    if rc.item_repr != "id" and quantizer is None:
        raise PipelineError(f"recommend.item_repr={rc.item_repr} needs a codebook, but none was found.",
                            "run `semid quantize DATASET` first (or set recommend.item_repr=id).")
    if rc.joint and rc.item_repr != "id":
        if quantizer.method != "rqvae" or text is None:
            raise PipelineError("recommend.joint=true trains the RQ-VAE inside SASRec, so it needs an rqvae codebook "
                                "and the item embeddings.", "set quantizer.method=rqvae and run `semid quantize`.")
        joint = JointRQ(deepcopy(quantizer.encoder), deepcopy(quantizer.decoder), quantizer.codebooks,
                        quantizer.distances, torch.from_numpy(text), float(quantizer.params.get("beta", 0.25)))
    id_dim = rc.id_dim if rc.item_repr == "id" else rc.unified_id_dim
    items = ItemTable(n_items, rc.item_repr, id_dim=id_dim,
                      codes=None if codes is None else torch.from_numpy(codes[:, : quantizer.levels].copy()),
                      codebooks=None if quantizer is None else quantizer.codebooks,
                      freeze_codebooks=rc.freeze_codebooks, joint=joint,
                      id_scale=rc.unified_id_scale if rc.item_repr == "unified" else 1.0)
    return SASRec(items, rc.max_len, rc.layers, rc.heads, rc.dropout)


@deterministic()
def fit(model: SASRec, split: Split, rc: RecommendConfig,
        on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train with early stopping on the validation metric; restores the best weights. Returns a summary."""
    gen = torch.Generator().manual_seed(rc.seed)
    opt = torch.optim.Adam(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    protocol = "full_masked" if rc.mask_history else "full"
    stopper, history = EarlyStopper(rc.patience), []
    train_seconds = 0.0
    for epoch in range(rc.epochs):
        model.train()
        start, total, batches = time.perf_counter(), 0.0, 0
        for inputs, targets in train_batches(split.train, rc.max_len, rc.batch_size, gen):
            loss = model.loss(inputs, targets, rc.loss, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        seconds = time.perf_counter() - start
        train_seconds += seconds
        valid = evaluate(model, split, "valid", rc.max_len, rc.eval_batch_size)[protocol][rc.monitor]
        row = {"epoch": epoch, "loss": total / max(batches, 1), "seconds": seconds, f"valid_{rc.monitor}": valid}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if stopper.step(model, valid, epoch):
            break
    stopper.restore(model)
    return {"best_epoch": stopper.best_epoch, "epochs": len(history), "monitor": f"valid {protocol} {rc.monitor}",
            "best_valid": stopper.best, "seconds_per_epoch": train_seconds / max(len(history), 1),
            "history": history}


def flat_metrics(results: dict[str, dict[str, dict]]) -> dict[str, float]:
    """{'valid': {'full': {'ndcg@10': ..}}} -> {'valid_full_ndcg@10': ..} (hr@k is dropped: equals recall@k)."""
    return {f"{split}_{p}_{k}": v for split, protos in results.items() for p, ms in protos.items()
            for k, v in ms.items() if not k.startswith("hr@")}


def load_codebook(folder: Path) -> tuple[Quantizer, np.ndarray]:
    """The quantizer and the final semantic IDs [N, L(+1)] of a quantize output folder."""
    if not (folder / "ids.parquet").exists():
        raise PipelineError(f"No semantic IDs in {folder}.", "run `semid quantize DATASET` first.")
    from tasks.quantize import code_columns

    ids = pd.read_parquet(folder / "ids.parquet").sort_values("item_id")
    codes = ids[code_columns(ids)].to_numpy(np.int64)
    return Quantizer.load(folder / "quantizer"), codes


def _inputs_for(name: str, cfg: Config, rc: RecommendConfig, codebook: Path | None):
    """Processed tables, item count, and (quantizer, codes, text) as the item representation needs them."""
    from tasks.embed import load_embeddings
    from tasks.quantize import semantic_dir
    from tasks.validate import load_processed

    tables = load_processed(cfg, name)
    n_items = int(tables["items"]["item_id"].max()) + 1
    quantizer = codes = text = None
    if rc.item_repr != "id":
        quantizer, codes = load_codebook(codebook or semantic_dir(cfg, name))
        if len(codes) != n_items:
            raise PipelineError(f"The codebook has IDs for {len(codes)} items but {name} has {n_items}.",
                                f"re-run `semid quantize {name}` on the current data.")
        if rc.joint:
            text = load_embeddings(cfg, name)
    return tables, n_items, (codes, quantizer, text)


def recommend(name: str, cfg: Config, codebook: Path | None = None, out: Path | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train + evaluate SASRec on dataset NAME; `codebook` defaults to data/semantic/NAME."""
    rc = cfg.recommend
    tables, n_items, parts = _inputs_for(name, cfg, rc, codebook)
    split = Split(sequences(tables["interactions"]), n_items, rc.negatives, rc.seed)
    model = build_model(n_items, rc, *parts)
    summary = fit(model, split, rc, on_epoch)
    results = {"valid": evaluate(model, split, "valid", rc.max_len, rc.eval_batch_size),
               "test": evaluate(model, split, "test", rc.max_len, rc.eval_batch_size)}
    metrics = {**flat_metrics(results), "seconds_per_epoch": summary["seconds_per_epoch"],
               "epochs": summary["epochs"], "best_epoch": summary["best_epoch"]}
    info = {"dataset": name, "model": "sasrec", "item_repr": rc.item_repr, "joint": rc.joint, "n_items": n_items,
            "users": len(split.seqs), "dim": model.items.dim, "params": sum(p.numel() for p in model.parameters()),
            "config": rc.model_dump(mode="json"), "codebook": None if codebook is None else str(codebook),
            "monitor": summary["monitor"], "best_valid": summary["best_valid"], "results": results}
    with staged_dir(out or recommend_dir(cfg, name)) as folder:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "recommender.json").write_text(json.dumps(info, indent=2) + "\n")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (folder / "history.json").write_text(json.dumps(summary["history"], indent=2) + "\n")
    return {**info, "metrics": metrics}


def reevaluate(name: str, cfg: Config, folder: Path | None = None) -> dict[str, Any]:
    """Rebuild the saved SASRec of NAME from its recommender.json + weights and evaluate it again."""
    folder = folder or recommend_dir(cfg, name)
    if not (folder / "recommender.json").exists():
        raise PipelineError(f"No trained recommender in {folder}.", f"run `semid train {name}` first.")
    info = json.loads((folder / "recommender.json").read_text())
    rc = RecommendConfig.model_validate(info["config"])
    codebook = Path(info["codebook"]) if info.get("codebook") else None
    tables, n_items, parts = _inputs_for(name, cfg, rc, codebook)
    model = build_model(n_items, rc, *parts)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    split = Split(sequences(tables["interactions"]), n_items, rc.negatives, rc.seed)
    results = {"valid": evaluate(model, split, "valid", rc.max_len, rc.eval_batch_size),
               "test": evaluate(model, split, "test", rc.max_len, rc.eval_batch_size)}
    return {**info, "results": results}
