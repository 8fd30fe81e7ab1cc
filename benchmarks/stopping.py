"""Early-stopping rules for the default job, from whole training curves: train the default recommender on ml-100k
for a fixed number of epochs (no early stopping), one run per seed, recording validation and test NDCG@10 (full
ranking, history masked) after every epoch; then replay stopping rules (patience, EMA smoothing, epoch cap) on
those curves. A rule is chosen on the validation columns; the test column shows what it would have given.

A seed sets quantizer.seed and recommend.seed, as in benchmarks/default_job.py, so a curve is the run that
`semid run` would make with that seed (training is deterministic), up to the stopping rule.

    python benchmarks/stopping.py curves --seeds 0 1 2 3 4 --epochs 80 [--set recommend.batch_size=128 --tag b128]
    python benchmarks/stopping.py rules        # render benchmarks/results/stopping.md from stopping.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
RECORDS = OUT / "stopping.jsonl"


def curve(seed: int, epochs: int, sets: list[str], root: Path) -> dict:
    """One seed's per-epoch validation and test NDCG@10 (masked), training for exactly `epochs` epochs."""
    from semid.models.seqrec import evaluate, optimizer, train_batches
    from semid.models.training import fit
    from semid.tasks.config import load_config
    from semid.tasks.fsutil import git_sha
    from semid.tasks.recommend import split_and_model

    overrides = [f"data.root={root}", f"quantizer.seed={seed}", f"diagnose.seed={seed}", f"recommend.seed={seed}",
                 *sets]
    prepare_dataset("ml-100k", "diagnose", overrides)
    cfg = load_config(PARAMS, [*overrides, "data.dataset=ml-100k"])
    p = cfg.recommend
    split, model = split_and_model("ml-100k", cfg, p)
    valid, test = [], []

    def validate() -> tuple[float, dict]:
        for which, out in (("valid", valid), ("test", test)):
            out.append(evaluate(model, split, which, p.max_len, p.eval_batch_size)["full_masked"]["ndcg@10"])
        return valid[-1], {}

    start = time.perf_counter()
    summary = fit(model, optimizer(model, p), epochs=epochs, patience=epochs + 1, seed=p.seed,
                  batches=lambda g: train_batches(split.train, p.max_len, p.batch_size, g, p.every_window, p.batching),
                  loss=lambda b, g: model.loss(b[0], b[1], p.loss, g, None), validate=validate)
    return {"seed": seed, "sets": sets, "valid": valid, "test": test, "epochs": epochs,
            "seconds_per_epoch": summary["seconds_per_epoch"], "wall_seconds": time.perf_counter() - start,
            "git": git_sha(12)}


def replay(valid: list[float], patience: int, smoothing: float, cap: int) -> tuple[int, int]:
    """(restored epoch, epochs run) under training's own EarlyStopper, fed a recorded curve instead of a model's
    scores (an empty module stands in for the weights it would copy)."""
    from torch import nn

    from semid.models.training import EarlyStopper

    stopper, weights = EarlyStopper(patience, smoothing=smoothing), nn.Module()
    for epoch, score in enumerate(valid[:cap]):
        if stopper.step(weights, score, epoch):
            return stopper.best_epoch, epoch + 1
    return stopper.best_epoch, min(cap, len(valid))


def rules(records: list[dict]) -> list[str]:
    tags = sorted({r["tag"] for r in records})
    lines = ["| curves | patience | smoothing | cap | epochs run per seed | restored epoch's valid N@10 | "
             "test N@10 per seed | test mean | worst / best |", "|---|---|---|---|---|---|---|---|---|"]
    for tag, patience, smoothing, cap in itertools.product(tags, (5, 10, 15), (0.0, 0.5, 0.8), (40, 50, 60)):
        runs = sorted((r for r in records if r["tag"] == tag), key=lambda r: r["seed"])
        picks = [replay(r["valid"], patience, smoothing, cap) for r in runs]
        test = np.array([r["test"][b] for r, (b, _) in zip(runs, picks, strict=True)])
        valid = np.array([r["valid"][b] for r, (b, _) in zip(runs, picks, strict=True)])
        lines.append(f"| {tag} ({len(runs)} seeds) | {patience} | {smoothing} | {cap} | "
                     f"{' / '.join(str(n) for _, n in picks)} | {valid.mean():.4f} | "
                     f"{' / '.join(f'{t:.4f}' for t in test)} | {test.mean():.4f} | {test.min() / test.max():.3f} |")
    return lines


def windows(records: list[dict]) -> list[str]:
    lines = ["| curves | seed | valid N@10, mean of epochs 0-9 | 10-19 | 20-29 | 30-39 | 40-49 | 50-59 | 60-79 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["tag"], r["seed"])):
        v = np.array(r["valid"])
        cells = [f"{v[a:b].mean():.4f}" if len(v) >= b else "-" for a, b in
                 ((0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 80))]
        lines.append(f"| {r['tag']} | {r['seed']} | {' | '.join(cells)} |")
    return lines


def render() -> None:
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    m = records[0]["machine"]
    dates = sorted({r["machine"]["date"][:10] for r in records})
    lines = ["# Early stopping for the default job (ml-100k, unified SASRec): rules replayed on whole curves", "",
             f"Machine: {machine_label(m)}. Dates: {', '.join(dates)}. "
             f"Git: {', '.join(sorted({r['git'] for r in records}))}. "
             f"Commands: {'; '.join(sorted({'`' + r['command'] + '`' for r in records}))}", "",
             "## Validation NDCG@10 (masked) by epoch window: is it still rising?", "", *windows(records), "",
             "## Stopping rules replayed (chosen on the validation columns; test shown, never used to choose)", "",
             *rules(records)]
    write_report("stopping", lines)  # + the hand-written stopping.findings.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["curves", "rules"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--tag", default="default")
    args = ap.parse_args()
    if args.what == "curves":
        OUT.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                record = {"tag": args.tag, **curve(seed, args.epochs, args.sets, Path(tmp) / "data"),
                          "machine": machine(), "command": "python benchmarks/stopping.py " + shlex.join(sys.argv[1:])}
            with RECORDS.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"seed {seed}: best valid epoch {int(np.argmax(record['valid']))}, "
                  f"{record['seconds_per_epoch']:.2f} s/epoch", flush=True)
    render()


if __name__ == "__main__":
    main()
