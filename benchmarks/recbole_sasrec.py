"""Reference run: RecBole 1.2.1's SASRec on exactly our leave-one-out split. Runs in its OWN venv (RecBole needs
numpy < 2 and pandas 2.2; see ../shared/recbole-notes.md):

    python3.11 -m venv .recbole && .recbole/bin/pip install "torch==2.13.0" && \\
      .recbole/bin/pip install "torch==2.13.0" "recbole==1.2.1" "numpy<2" "pandas==2.2.3" "setuptools>=77.0.3,<81" \
        "pyarrow<20"
    .recbole/bin/python benchmarks/recbole_sasrec.py data/processed/amazon-scientific out.json --epochs 8

Reads our processed interactions.parquet (user, item, per-user position), writes RecBole atomic files with the
position as timestamp (order TO, leave-one-out LS valid_and_test: the same targets as ours), trains SASRec with
the paper's shape (2 blocks, 2 heads, hidden 64, dropout 0.5, max length 50, CE loss, Adam 1e-3, batch 256)
and writes test metrics (unmasked full ranking, as RecBole does) and seconds per training epoch as JSON.
Run-time fixes from the notes are applied here, never in site-packages.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hostinfo import provenance  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("processed", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    _load = torch.load  # RecBole pickles its Config into checkpoints: torch >= 2.6 needs weights_only=False
    torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})
    import recbole.trainer.trainer as rb_trainer
    import recbole.utils.utils as rb_utils

    class _NoBoard:
        def add_scalar(self, *a, **k): ...
        def add_hparams(self, *a, **k): ...
        def close(self): ...

    rb_utils.get_tensorboard = lambda logger: _NoBoard()
    rb_trainer.get_tensorboard = lambda logger: _NoBoard()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    work = Path(tempfile.mkdtemp())
    name = "semid"
    inter = pd.read_parquet(args.processed / "interactions.parquet").sort_values(["user_id", "position"])
    (work / name).mkdir()
    with open(work / name / f"{name}.inter", "w") as fh:
        fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, p in zip(inter["user_id"], inter["item_id"], inter["position"], strict=True):
            fh.write(f"{u}\t{i}\t{p}\n")
    cfg = {
        "data_path": str(work), "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "MAX_ITEM_LIST_LENGTH": 50, "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "loss_type": "CE", "train_neg_sample_args": None,
        "learning_rate": 1e-3, "train_batch_size": 256, "eval_batch_size": 1024, "epochs": args.epochs,
        "stopping_step": args.stopping_step, "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO",
                                                           "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG", "MRR"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
        "use_gpu": False, "gpu_id": "", "seed": 0, "reproducibility": True, "show_progress": False,
        "checkpoint_dir": str(work / "ckpt"), "log_wandb": False,
    }
    config = Config(model="SASRec", dataset=name, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = SASRec(config, train.dataset)
    trainer = Trainer(config, model)
    epoch_seconds: list[float] = []
    inner = trainer._train_epoch

    def timed(*a, **k):
        start = time.perf_counter()
        out = inner(*a, **k)
        epoch_seconds.append(time.perf_counter() - start)
        return out

    trainer._train_epoch = timed
    best_valid, _ = trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    out = {"model": "recbole-sasrec", "recbole": __import__("recbole").__version__, "torch": torch.__version__,
           "threads": args.threads, "epochs": len(epoch_seconds), "epoch_cap": args.epochs,
           "seconds_per_epoch": sum(epoch_seconds) / max(1, len(epoch_seconds)), "best_valid_ndcg@10":
           float(best_valid) if not isinstance(best_valid, dict) else None,
           "test": {k.lower(): float(v) for k, v in result.items()}, "train_samples": len(train.dataset),
           **provenance("benchmarks/recbole_sasrec.py")}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
