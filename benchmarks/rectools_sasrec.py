"""Reference run: RecTools 0.19's SASRec (the SASRec+SS of blondered/transformer_benchmark) on exactly our
leave-one-out split. Runs in its OWN venv (RecTools needs numpy < 2; pyarrow >= 20 needs numpy 2):

    python3.11 -m venv .rectools && .rectools/bin/pip install "torch==2.13.0" && \\
      .rectools/bin/pip install "torch==2.13.0" "rectools[torch]==0.19.0" "pyarrow<20"
    .rectools/bin/python benchmarks/rectools_sasrec.py data/processed/amazon-beauty out.json --epochs 20

Reads our processed interactions.parquet (user, item, per-user position) and hands RecTools every item of a user
but the last, with the position as the time. RecTools then holds out each user's last item of that as validation
(transformer_benchmark's `get_val_mask_func_all`), trains on the rest and recommends from all of it, so its
training, validation and test inputs are ours (models/seqrec.py `Split`). Two differences stay, and are recorded:
it trains on each user's last 51 items only, and its catalogue is the items of the training rows, so a test target
seen only as someone's validation or test item can never be recommended (the denominator is still every user).

The model and trainer are transformer_benchmark's Beauty LOO configuration (configs/paper/loo/s3_vanilla.yaml:
256 factors, 1 block, 1 head, dropout 0.2, max length 50, sampled softmax over 256 uniform negatives per position,
lr 1e-3, batch 128, Adam betas (0.9, 0.98), Xavier init) with its stopping: history-masked validation Recall@10,
patience 50, best checkpoint reloaded. On this CPU an epoch costs about 4.5 min at 64 factors and half an hour at
256, so `--epochs` caps the run and the record says so. Writes test Recall/NDCG@{1,5,10,20} over the full catalogue,
history-masked (`filter_viewed=True`, the reference's protocol) and unmasked, the validation curve, and seconds per
training epoch, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hostinfo import provenance  # noqa: E402

KS = (1, 5, 10, 20)


def loo_last_mask(raw: pd.DataFrame) -> np.ndarray:
    """RecTools' get_val_mask_func: each user's last interaction (by time, stable), aligned to `raw`'s rows."""
    from rectools import Columns

    rank = (raw.sort_values(Columns.Datetime, ascending=False, kind="stable")
            .groupby(Columns.User, sort=False).cumcount())
    return (rank == 0).reindex(raw.index).values


def callbacks(work: Path, patience: int) -> list:
    """transformer_benchmark's callbacks (masked validation Recall@10, best checkpoint, early stopping) plus a
    validation NDCG@10 and a timer that keeps training and validation seconds apart."""
    from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint

    class Validation(Callback):
        """Recall@10 and NDCG@10 of the validation target over the full catalogue, the input history masked."""

        def __init__(self) -> None:
            self.ranks: list[torch.Tensor] = []
            self.curve: list[dict] = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            model, embs = pl_module.torch_model, pl_module.item_embs
            logits = model.similarity_module(model.encode_sessions(batch, embs)[:, -1, :], embs)
            seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, batch["x"], True)
            seen[:, 0] = True  # the pad
            logits = logits.masked_fill(seen, float("-inf"))
            target = logits.gather(1, batch["y"][:, :1])
            self.ranks.append(1 + (logits > target).sum(1))

        def on_validation_epoch_end(self, trainer, pl_module):
            rank = torch.cat(self.ranks).double()
            self.ranks.clear()
            recall = float((rank <= 10).double().mean())
            ndcg = float(torch.where(rank <= 10, 1 / torch.log2(rank + 1), 0).mean())
            self.curve.append({"recall@10": recall, "ndcg@10": ndcg})
            pl_module.log("recall@10", recall, on_step=False, on_epoch=True)
            pl_module.log("ndcg@10", ndcg, on_step=False, on_epoch=True)

    class Timer(Callback):
        """Lightning calls on_train_epoch_end after the epoch's validation: subtract the validation time."""

        def __init__(self) -> None:
            self.train: list[float] = []
            self.valid: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._t = time.perf_counter()

        def on_validation_epoch_start(self, trainer, pl_module):
            self._v = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module):
            self.valid.append(time.perf_counter() - self._v)

        def on_train_epoch_end(self, trainer, pl_module):
            self.train.append(time.perf_counter() - self._t - self.valid[-1])
            print(f"  epoch {len(self.train) - 1}: train {self.train[-1]:.1f} s valid {self.valid[-1]:.1f} s "
                  f"{trainer.callback_metrics.get('recall@10', float('nan')):.5f} R@10", flush=True)

    return [Validation(),  # before the callbacks that monitor its metric
            ModelCheckpoint(dirpath=work / "ckpt", filename="best_recall", monitor="recall@10", mode="max",
                            save_top_k=1),
            EarlyStopping(monitor="recall@10", mode="max", patience=patience), Timer()]


def test_metrics(model, dataset, test: pd.DataFrame) -> dict:
    """Recall and NDCG at KS of each user's held-out last item, history-masked and unmasked; RecTools' Rank is
    1-based and every user (one test row each) counts in the denominator."""
    from rectools import Columns

    out, n_users = {}, len(test)
    for masked in (False, True):
        reco = model.recommend(users=test["user_id"].values, dataset=dataset, k=max(KS), filter_viewed=masked,
                               on_unsupported_targets="warn")
        rank = reco.merge(test[["user_id", "item_id"]], on=["user_id", "item_id"])[Columns.Rank].to_numpy()
        out["full_masked" if masked else "full"] = {
            **{f"recall@{k}": float((rank <= k).sum() / n_users) for k in KS},
            **{f"ndcg@{k}": float((1 / np.log2(rank[rank <= k] + 1)).sum() / n_users) for k in KS}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("processed", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=50)
    ap.add_argument("--factors", type=int, default=256)
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=32)  # transformer_benchmark's setup_deterministic(32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pytorch_lightning
    import rectools
    from pytorch_lightning import Trainer, seed_everything
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel

    seed_everything(args.seed, workers=True)
    torch.use_deterministic_algorithms(True)
    inter = pd.read_parquet(args.processed / "interactions.parquet").sort_values(["user_id", "position"],
                                                                                kind="stable")
    last = inter.groupby("user_id")["position"].transform("max")
    test, seen = inter[inter["position"] == last], inter[inter["position"] < last]
    # Weight must be non-zero: RecTools' validation batches tell history (weight 0) from the target by it.
    dataset = Dataset.construct(pd.DataFrame({Columns.User: seen["user_id"].values,
                                              Columns.Item: seen["item_id"].values, Columns.Weight: 1.0,
                                              Columns.Datetime: seen["position"].values}))
    work = Path(tempfile.mkdtemp())
    cbs = callbacks(work, args.patience)
    model = SASRecModel(
        n_factors=args.factors, session_max_len=50, n_blocks=1, n_heads=1, dropout_rate=0.2,
        loss="sampled_softmax", n_negatives=args.negatives, lr=1e-3, batch_size=128, deterministic=True,
        get_val_mask_func=loo_last_mask, recommend_torch_device="cpu", recommend_batch_size=256,
        get_trainer_func=lambda: Trainer(max_epochs=args.epochs, deterministic=True, accelerator="cpu", devices=1,
                                         enable_progress_bar=False, enable_model_summary=False,
                                         num_sanity_val_steps=0, logger=False, callbacks=cbs))
    model.fit(dataset)
    trainer = model.fit_trainer  # a deep copy of the trainer built above: read its callbacks, not `cbs`
    valid, timer = (next(c for c in trainer.callbacks if type(c).__name__ == n) for n in ("Validation", "Timer"))
    best = trainer.checkpoint_callback.best_model_path
    best_epoch = int(torch.load(best, weights_only=False)["epoch"])
    model.load_weights_from_checkpoint(best)
    catalogue = set(model.data_preparator.get_known_item_ids().tolist())
    out = {"model": "rectools-sasrec", "rectools": rectools.__version__, "torch": torch.__version__,
           "pytorch_lightning": pytorch_lightning.__version__, "threads": args.threads, "seed": args.seed,
           "factors": args.factors, "negatives": args.negatives, "epochs": len(timer.train),
           "epoch_cap": args.epochs, "patience": args.patience, "best_epoch": best_epoch,
           "seconds_per_epoch": sum(timer.train) / max(1, len(timer.train)),
           "valid_seconds_per_epoch": sum(timer.valid) / max(1, len(timer.valid)),
           "valid_curve": valid.curve, "best_valid_masked_recall@10": max(c["recall@10"] for c in valid.curve),
           "test": test_metrics(model, dataset, test), "users": len(test),
           "catalogue": len(catalogue), "test_targets_outside_catalogue": int((~test["item_id"].isin(catalogue)).sum()),
           "train_rows": len(model.data_preparator.train_dataset.interactions.df),
           "params": model.get_params(simple_types=True), **provenance("benchmarks/rectools_sasrec.py")}
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("params", "valid_curve")}))


if __name__ == "__main__":
    sys.exit(main())
