"""Same shard plan, thread runner vs Dask: the data steps (ingest -> validate -> embed -> quantize -> diagnose) of a
whole dataset once on `flow.task_runner=local` and once on a Dask LocalCluster of 2 single-threaded worker
processes, each run in its own data root with its own empty embedding cache (no run reads another's vectors);
compares the sha256 of embeddings.npy, codes.npy, ids.parquet and diagnostics.json, and records each run's wall time.
The pipeline settings are params.yaml's (the configured quantizer), plus embed.shard_size so the plan has several
shards per worker, plus any --set.

    python benchmarks/engine_identity.py [--dataset amazon-scientific] [--shard-size 500] [--set key=value ...]

Reads the dataset from its pinned source or `SEMID_DATA_MIRROR`. Writes benchmarks/results/engine_identity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS  # noqa: E402
from benchmarks.quantizers import OUT, machine, machine_label, write_report  # noqa: E402

OUTPUTS = ("features/{n}/embeddings.npy", "semantic/{n}/codes.npy", "semantic/{n}/ids.parquet",
           "semantic/{n}/diagnostics.json")
RUNNERS = {"local": ["flow.task_runner=local"], "dask": ["flow.task_runner=dask"]}


def one_run(name: str, runner: str, sets: list[str], root: Path) -> dict:
    from semid.flows.engine import on_engine
    from semid.flows.retrain import prepare
    from semid.tasks.config import load_config
    from semid.tasks.fsutil import sha256_file

    overrides = [f"data.root={root / 'data'}", f"embed.cache_dir={root / 'cache'}", f"data.dataset={name}",
                 "flow.workers=2", "flow.threads_per_task=1", *RUNNERS[runner], *sets]
    start = time.perf_counter()
    out = on_engine(prepare, load_config(PARAMS, overrides))(config=str(PARAMS), overrides=overrides)
    wall = time.perf_counter() - start
    manifest = json.loads((root / "data" / "features" / name / "manifest.json").read_text())
    return {"runner": runner, "wall_seconds": round(wall, 1), "steps": out["steps"], "shards": manifest["shards"],
            "items": manifest["items"], "encoded": manifest["encoded"],
            "sha256": {rel.format(n=name): sha256_file(root / "data" / rel.format(n=name)) for rel in OUTPUTS}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-scientific")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--set", dest="sets", nargs="*", default=[])
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from semid.flows.engine import quiet_prefect

    quiet_prefect()  # before prefect is imported
    from semid.tasks.fsutil import git_sha

    sets = [f"embed.shard_size={args.shard_size}", *args.sets]
    runs = []
    for runner in RUNNERS:
        with tempfile.TemporaryDirectory(prefix=f"engine-{runner}-") as tmp:
            runs.append(one_run(args.dataset, runner, sets, Path(tmp)))
        print(f"{runner}: {runs[-1]['wall_seconds']} s, {runs[-1]['shards']} shards", flush=True)
    same = {rel: runs[0]["sha256"][rel] == runs[1]["sha256"][rel] for rel in runs[0]["sha256"]}
    record = {**machine(), "git": git_sha(), "dataset": args.dataset, "sets": sets, "identical": same, "runs": runs,
              "command": shlex.join(["python", "benchmarks/engine_identity.py", *sys.argv[1:]])}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine_identity.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Same shard plan: thread runner vs Dask LocalCluster (2 workers x 1 thread)", "",
             f"Machine: {machine_label(record)}. Date: {record['date']}. "
             f"Git: {record['git']}.", f"Command: `{record['command']}`", "",
             f"{args.dataset}: {runs[0]['items']} items, {runs[0]['shards']} embedding shards, params.yaml plus "
             f"`{' '.join(sets)}`; each run in its own data root with an empty embedding cache.", "",
             "| output | sha256 (thread runner) | sha256 (Dask) | identical |", "|---|---|---|---|"]
    for rel, ok in same.items():
        lines.append(f"| {rel} | {runs[0]['sha256'][rel][:16]} | {runs[1]['sha256'][rel][:16]} | "
                     f"{'yes' if ok else '**NO**'} |")
    lines += ["", "| runner | wall s (ingest to diagnose) | texts encoded |", "|---|---|---|"]
    lines += [f"| {r['runner']} | {r['wall_seconds']} | {r['encoded']} |" for r in runs]
    write_report("engine_identity", lines)
    print("identical" if all(same.values()) else f"DIFFERENT: {[k for k, v in same.items() if not v]}")
    sys.exit(0 if all(same.values()) else 1)


if __name__ == "__main__":
    main()
