"""The default job as a new user runs it: `semid run` on ml-100k, once per seed, each with a fresh data root and a
fresh MLflow store (the embedding cache is kept unless --cold-cache). Reports per seed the wall time, whether both
models were promoted, the recommender's test Recall/NDCG@10 (history masked, and unmasked) and the most-popular
baseline's, and across seeds the worst/best test NDCG@10 ratio.

    python benchmarks/default_job.py [--seeds 0 1 2 3 4] [--set recommend.lr=0.003 ...]

A seed sets quantizer.seed, diagnose.seed and recommend.seed. Writes benchmarks/results/default_job.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent


def one_run(seed: int, sets: list[str], cold_cache: bool) -> dict:
    from semid.tasks.fsutil import git_sha

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "SEMID_NO_DVC": "1"}
        if cold_cache:
            env["XDG_CACHE_HOME"] = str(tmp / "cache")
        overrides = [f"data.root={tmp / 'data'}", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                     f"quantizer.seed={seed}", f"diagnose.seed={seed}", f"recommend.seed={seed}", *sets]
        cmd = [str(BIN / "semid"), "run", *[a for o in overrides for a in ("--set", o)]]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        metrics_file = tmp / "data" / "recommend" / "ml-100k" / "metrics.json"
        m = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        keys = ("test_full_masked_recall@10", "test_full_masked_ndcg@10", "test_full_recall@10", "test_full_ndcg@10",
                "valid_full_masked_ndcg@10")
        return {"seed": seed, "rc": proc.returncode, "wall_seconds": wall, "sets": sets, "cold_cache": cold_cache,
                "promoted": "were promoted together" in proc.stdout,
                **{k: m.get(k) for k in keys}, **{f"baseline_{k}": m.get(f"baseline_{k}") for k in keys},
                "epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"), "git": git_sha(12),
                "tail": proc.stdout.strip().splitlines()[-6:] + proc.stderr.strip().splitlines()[-3:]}


def write(records: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "default_job.json").write_text(json.dumps(records, indent=1) + "\n")
    r0 = records[0]
    lines = ["# The default job: `semid run` on ml-100k, one fresh data root + MLflow store per seed", "",
             f"Machine: {r0['machine']}. Date: {r0['date']}. Git: {r0['git']}. Command: `{r0['command']}`", "",
             "| seed | promoted | wall s | test R@10 masked | test N@10 masked | most-pop N@10 masked | lift | "
             "test N@10 unmasked | epochs (best) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        n, pop = r["test_full_masked_ndcg@10"], r["baseline_test_full_masked_ndcg@10"]
        lift = f"{n / pop - 1:+.0%}" if n is not None and pop else "-"
        cells = [f"{v:.4f}" if v is not None else "-" for v in (r["test_full_masked_recall@10"], n, pop)]
        unmasked = "-" if r["test_full_ndcg@10"] is None else f"{r['test_full_ndcg@10']:.4f}"
        lines.append(f"| {r['seed']} | {'yes' if r['promoted'] else 'NO'} | {r['wall_seconds']:.0f} | "
                     f"{' | '.join(cells)} | {lift} | {unmasked} | {r['epochs']} ({r['best_epoch']}) |")
    ndcg = [r["test_full_masked_ndcg@10"] for r in records if r["test_full_masked_ndcg@10"] is not None]
    if ndcg:
        a = np.array(ndcg)
        lines += ["", f"Test NDCG@10 (masked) over {len(a)} seeds: {a.mean():.4f} +- {a.std():.4f}; worst / best = "
                  f"{a.min() / a.max():.3f}; wall time max {max(r['wall_seconds'] for r in records):.0f} s."]
    write_report("default_job", lines)  # + the hand-written default_job.findings.md


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    ap.add_argument("--cold-cache", action="store_true", help="an empty embedding cache for every run")
    args = ap.parse_args()
    meta, records = machine(), []
    for seed in args.seeds:
        r = one_run(seed, args.sets, args.cold_cache)
        r.update({"machine": machine_label(meta), "date": meta["date"],
                  "command": shlex.join(["python", "benchmarks/default_job.py", *sys.argv[1:]])})
        records.append(r)
        print(f"seed {seed}: rc {r['rc']} promoted {r['promoted']} {r['wall_seconds']:.0f} s test N@10 masked "
              f"{r['test_full_masked_ndcg@10']} most-pop {r['baseline_test_full_masked_ndcg@10']}", flush=True)
        write(records)


if __name__ == "__main__":
    main()
