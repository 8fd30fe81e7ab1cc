"""Scale benchmark (issue 14): the pipeline's data stages, each as its own `semid` subprocess, from the 10k-item
Amazon Beauty catalogue (real) to SYNTHETIC catalogues of 100k (1M) items made by benchmarks/synthetic.py, with
wall time, CPU time, items/s and the peak anonymous RSS of the whole process tree per stage, and the log-log
slope per stage between consecutive sizes.

    python benchmarks/scale.py --sizes 10k 100k [1m] [--backend onnx-int8] [--task-runner local|dask]
        [--set quantizer.method=rqkmeans ...] [--until embed|quantize|diagnose] [--out scale]

Per size: generate (synthetic sizes only; timed, not a pipeline stage), then `semid data fetch`, `semid data
validate`, `semid embed` (with --task-runner: `semid prepare NAME --until validate`, then the embed stage is
`semid prepare NAME --until embed` with flow.task_runner set), `semid quantize`, `semid diagnose`. Every run
gets a fresh scratch dir under /tmp (data.root, and embed.cache_dir so every text is really encoded), deleted
afterwards; the ONNX export (embed.onnx_dir) is shared and built before the first measurement.

Memory: every 0.2 s the process tree of the stage (the subprocess and all its descendants, read from /proc) is
walked and RssAnon from /proc/<pid>/status summed; the peak of that sum is the stage's peak anonymous RSS.
Memory-mapped files (embeddings.npy, parquet) count in VmRSS/VmHWM but not in RssAnon, hence anon as the
number; the summed per-process VmHWM is recorded beside it for reference. CPU time is user + sys of the tree
(getrusage(RUSAGE_CHILDREN) around the stage: every descendant that was waited for).

Records are merged into benchmarks/results/OUT.json (a record is replaced by a namesake: same size, stage, task
runner, backend and overrides) and OUT.md is written from all of them, plus the hand-written OUT.findings.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
SIZES = {"10k": None, "100k": (100_000, 1_000_000), "1m": (1_000_000, 10_000_000),  # None: amazon-beauty (real)
         "100m": (1_000_000, 100_000_000)}  # 1M items, 100M interactions: for ingest + validate (--until validate)
REAL = "amazon-beauty"
STAGES = ["generate", "fetch", "validate", "embed", "quantize", "diagnose"]


# ---------------------------------------------------------------- pure helpers (tests/unit/test_scale.py)


def slope(n1: float, t1: float, n2: float, t2: float) -> float | None:
    """Log-log slope log(t2/t1) / log(n2/n1): 1 = linear in the item count, 2 = quadratic, 0 = flat."""
    if n1 <= 0 or n2 <= 0 or n1 == n2 or t1 is None or t2 is None or t1 <= 0 or t2 <= 0:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def children_map(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """ppid -> child pids of every live process (from /proc/<pid>/stat; a vanished process is skipped)."""
    kids: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command may contain spaces and ')'
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants."""
    kids, out, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def status_kb(pid: int, keys: tuple[str, ...] = ("RssAnon", "VmHWM", "VmRSS")) -> dict[str, int]:
    """The kB fields `keys` of /proc/<pid>/status ({} if the process is gone)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in keys:
                out[key] = int(val.split()[0])
    except (OSError, ValueError):
        return {}
    return out


class TreeSampler:
    """Samples the process tree under `pid` every `interval` s on a thread: peak of the summed RssAnon (and of the
    summed VmRSS), and each process's VmHWM (summed at the end), all in kB."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_anon_kb = self.peak_rss_kb = self.samples = 0
        self.hwm_kb: dict[int, int] = {}
        self.max_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        anon = rss = 0
        pids = tree_pids(self.pid)
        for pid in pids:
            st = status_kb(pid)
            anon += st.get("RssAnon", 0)
            rss += st.get("VmRSS", 0)
            if st.get("VmHWM"):
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st["VmHWM"])
        self.peak_anon_kb, self.peak_rss_kb = max(self.peak_anon_kb, anon), max(self.peak_rss_kb, rss)
        self.max_procs = max(self.max_procs, len(pids))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        mb = 1024.0
        return {"peak_anon_mb": round(self.peak_anon_kb / mb, 1), "peak_rss_mb": round(self.peak_rss_kb / mb, 1),
                "hwm_sum_mb": round(sum(self.hwm_kb.values()) / mb, 1), "processes": self.max_procs,
                "samples": self.samples}


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None, interval: float = 0.2,
            log: Path | None = None) -> dict:
    """Run `cmd` to the end; wall s, CPU s (user + sys of every waited-for descendant), the tree sampler's
    memory numbers and the return code. Output goes to `log` (or is discarded)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid, interval) as sampler:
            rc = proc.wait()
    finally:
        if log:
            sink.close()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"rc": rc, "wall_s": round(wall, 2), "cpu_s": round(user + sys_, 2), "user_s": round(user, 2),
            "sys_s": round(sys_, 2), "ru_maxrss_mb": round(after.ru_maxrss / 1024, 1), **sampler.result()}


# ---------------------------------------------------------------- the runs


def semid_bin() -> str:
    exe = Path(sys.executable).with_name("semid")
    return str(exe) if exe.exists() else "semid"


def record_key(r: dict) -> tuple:
    """A new record replaces its namesake: same size, stage, runner, backend, overrides and CPU (a run on another
    CPU is another measurement, kept beside it)."""
    return (r["size"], r["stage"], r.get("task_runner"), r["backend"], tuple(r.get("overrides") or []),
            bool(r.get("seeded_vectors")), r.get("cpu"), r.get("int8_kernels"))


def seed_cache(synth: Path, items_parquet: Path, cache: Path, block: int = 100_000) -> int:
    """--vectors: put synthetic.py's vectors.npy into the run's embedding cache under each synthetic item's
    pipeline text (the processed items table's `text`), block by block, so `semid embed` serves every item from
    the cache. A synthetic item's source_id is its synthetic item_id, i<row> (benchmarks/synthetic.py); returns
    the number of vectors written."""
    import numpy as np
    import pyarrow.parquet as pq

    from semid.tasks.embed import EmbeddingCache, text_sha

    table = pq.read_table(items_parquet, columns=["source_id", "text"])
    rows = np.array([int(s[1:]) for s in table.column("source_id").to_pylist()], dtype=np.int64)
    keys = [text_sha(t or "") for t in table.column("text").to_pylist()]
    vectors = np.load(synth / "vectors.npy", mmap_mode="r")
    if rows.max() >= len(vectors):
        raise SystemExit(f"{synth / 'vectors.npy'} has {len(vectors)} rows; the items need {rows.max() + 1}")
    cache_db = EmbeddingCache(cache)
    for lo in range(0, len(rows), block):
        cache_db.add(keys[lo:lo + block], np.asarray(vectors[rows[lo:lo + block]]))
    return len(rows)


def run_summary(cfg, dataset: str) -> dict | None:
    """`semid run`'s summary (data/runs/NAME.json): each step's state and seconds, the gates, the recommender's
    metrics."""
    from semid.tasks import layout

    path = layout.run_summary(cfg, dataset)
    return json.loads(path.read_text()) if path.exists() else None


def quality(cfg, dataset: str, stage: str) -> dict | None:
    """The quantizer's numbers a stage wrote: quantize.json (fit time, duplicate rates) or diagnose's summary.json
    (K_eff per level, duplicate rate before collision resolution)."""
    from semid.tasks import layout

    folder = layout.semantic_dir(cfg, dataset)
    if stage == "quantize" and (folder / "quantize.json").exists():
        q = json.loads((folder / "quantize.json").read_text())
        return {k: q.get(k) for k in ("method", "fit_seconds", "pre_duplicate_rate", "final_duplicate_rate")}
    if stage == "diagnose" and (folder / "summary.json").exists():
        return json.loads((folder / "summary.json").read_text())
    return None


def run_size(size: str, args, scratch: Path, onnx_dir: Path, meta: dict) -> list[dict]:
    work = scratch / size
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work.parent / f"{size}-{args.task_runner or 'cli'}.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("SEMID_NO_DVC", "1")
    sets = [f"data.root={work / 'data'}", f"embed.cache_dir={work / 'cache'}", f"embed.backend={args.backend}",
            f"embed.onnx_dir={onnx_dir}", *args.set]
    records, synthetic = [], SIZES[size] is not None
    seeded = bool(args.vectors and synthetic)
    base = {"size": size, "synthetic": synthetic, "backend": args.backend, "task_runner": args.task_runner,
            "overrides": list(args.set), "command": meta["command"], "git_sha": meta["git_sha"],
            "date": meta["date"], "seeded_vectors": seeded, "cpu": meta.get("cpu"),
            "int8_kernels": meta.get("int8_kernels")}

    def stage(name: str, cmd: list[str], items: int | None, check: bool = True) -> dict:
        with open(log, "a") as fh:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
        print(f"[{size}] {name}: {shlex.join(cmd)[:200]}", flush=True)
        m = measure(cmd, env=env, cwd=REPO, log=log)
        rec = {**base, "stage": name, "dataset": dataset, "items": items, "interactions": n_events, **m,
               "items_per_s": round(items / m["wall_s"], 1) if items and m["wall_s"] > 0 else None}
        print(f"[{size}] {name}: rc {m['rc']} wall {m['wall_s']}s cpu {m['cpu_s']}s "
              f"anon {m['peak_anon_mb']} MB hwm {m['hwm_sum_mb']} MB", flush=True)
        records.append(rec)
        if m["rc"] != 0 and not check:  # recorded with the reason; the caller decides
            rec["log_tail"] = log.read_text().splitlines()[-15:]
        elif m["rc"] != 0:
            tail = log.read_text().splitlines()[-30:]
            raise SystemExit(f"[{size}] {name} failed (rc {m['rc']}); log {log}:\n" + "\n".join(tail))
        return rec

    n_events = SIZES[size][1] if synthetic else 198_502
    if synthetic:
        n_items, n_inter = SIZES[size]
        dataset = f"synthetic-{n_items}"
        synth = work / "synth"
        stage("generate", [sys.executable, str(REPO / "benchmarks" / "synthetic.py"), "--items", str(n_items),
                           "--interactions", str(n_inter), "--out", str(synth), "--seed", "0",
                           *(["--vectors"] if seeded else [])], n_items)
        local = json.loads((synth / "manifest.json").read_text())["pipeline_config"]["data"]["local"]
        sets = [f"data.dataset={dataset}", f"data.local={json.dumps(local)}", *sets]
        nominal = n_items
    else:
        dataset = REAL
        sets = [f"data.dataset={dataset}", *sets]
        nominal = 12_101
    flags = [a for s in sets for a in ("--set", s)]
    from semid.tasks import layout
    from semid.tasks.config import load_config

    cfg = load_config(None, sets)  # the paths the stages write to (data.root is this size's scratch)
    semid = semid_bin()
    if args.until == "validate":
        stage("fetch", [semid, "data", "fetch", dataset, *flags], nominal)
        stage("validate", [semid, "data", "validate", dataset, *flags], nominal)
        n = processed_items(cfg, dataset) or nominal
    elif args.task_runner:
        runner = [*flags, "--set", f"flow.task_runner={args.task_runner}"]
        stage("fetch+validate", [semid, "prepare", dataset, "--until", "validate", *runner], nominal)
        n = processed_items(cfg, dataset) or nominal
        stage("embed", [semid, "prepare", dataset, "--until", "embed", *runner], n)
    else:
        stage("fetch", [semid, "data", "fetch", dataset, *flags], nominal)
        stage("validate", [semid, "data", "validate", dataset, *flags], nominal)
        n = processed_items(cfg, dataset) or nominal
        if seeded:
            t0 = time.perf_counter()
            from semid.tasks.embed import cache_folder

            written = seed_cache(synth, layout.processed_dir(cfg, dataset) / "items.parquet", cache_folder(cfg))
            print(f"[{size}] seeded the embedding cache with {written:,} SYNTHETIC vectors in "
                  f"{time.perf_counter() - t0:.1f} s (not a pipeline stage)", flush=True)
        if args.until == "run":
            run_flags = [*flags, "--set", f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}"]
            env["PREFECT_HOME"] = str(work / "prefect")
            rec = stage("run", [semid, "run", *run_flags], n, check=False)
            rec["summary"] = run_summary(cfg, dataset)  # None unless the flow finished or a gate stopped it
            rec["quality"] = {**(quality(cfg, dataset, "quantize") or {}),
                              **(quality(cfg, dataset, "diagnose") or {})}
        else:
            stage("embed", [semid, "embed", dataset, *flags], n)
    manifest = layout.features_dir(cfg, dataset) / "manifest.json"
    emb = json.loads(manifest.read_text()) if manifest.exists() else {}
    for r in records:
        if r["stage"] == "embed":
            r["embed_manifest"] = {k: emb.get(k) for k in ("items", "encoded", "cached", "encoder", "backend", "dim")}
    for name in {"quantize": ["quantize"], "diagnose": ["quantize", "diagnose"]}.get(args.until, []):
        rec = stage(name, [semid, name, dataset, *flags], n)
        rec["quality"] = quality(cfg, dataset, name)  # what the stage just wrote
    for r in records:
        r["items_after_validate"] = n
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return records


def processed_items(cfg, dataset: str) -> int | None:
    """Items after validation (the processed items table), or None if it cannot be read."""
    import pyarrow.parquet as pq

    from semid.tasks import layout

    for f in sorted(layout.processed_dir(cfg, dataset).glob("items*.parquet")):
        return pq.ParquetFile(f).metadata.num_rows
    return None


def warm_onnx(backend: str, onnx_dir: Path) -> float:
    """Build the ONNX export once, outside every measurement (torch backend: nothing to do)."""
    if backend == "torch":
        return 0.0
    t0 = time.perf_counter()
    code = ("import sys; from semid.tasks.embed import load_encoder; "
            "load_encoder('all-MiniLM-L6-v2', sys.argv[1], sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, backend, str(onnx_dir)], check=True, cwd=REPO)
    return round(time.perf_counter() - t0, 1)


# ---------------------------------------------------------------- the report


def fmt(x, nd=1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"


def add_slopes(records: list[dict]) -> list[dict]:
    """Per stage, task runner, backend, overrides and CPU: slope between consecutive sizes (by item count).

    Sizes measured on different CPUs (model name and int8 kernel class; the VMs here change between sessions and
    int8 speed differs 2x between them) are not paired. Records from before the CPU was recorded pair with each
    other only."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(record_key(r)[1:], []).append(r)  # the namesake key without the size
    rows = []
    for (stage, runner, backend, ov, seeded, cpu, kernels), rs in groups.items():
        rs = sorted(rs, key=lambda r: (r["items"] or 0, r.get("interactions") or 0))
        for a, b in zip(rs, rs[1:], strict=False):
            by = "items" if a["items"] != b["items"] else "interactions"  # 1m -> 100m: same items, 10x the events
            n1, n2 = a.get(by), b.get(by)
            rows.append({"stage": stage, "task_runner": runner, "backend": backend, "overrides": list(ov),
                         "seeded_vectors": seeded, "cpu": cpu, "int8_kernels": kernels,
                         "from": a["size"], "to": b["size"], "by": by, "n1": n1, "n2": n2,
                         "wall_slope": slope(n1, a["wall_s"], n2, b["wall_s"]) if n1 and n2 else None,
                         "cpu_slope": slope(n1, a["cpu_s"], n2, b["cpu_s"]) if n1 and n2 else None,
                         "anon_slope": slope(n1, a["peak_anon_mb"], n2, b["peak_anon_mb"]) if n1 and n2 else None})
    return rows


def cpu_label(r: dict) -> str:
    return f"{r['cpu']} ({r.get('int8_kernels') or '?'})" if r.get("cpu") else "-"


def data_label(r: dict) -> str:
    if not r["synthetic"]:
        return "real"
    return "SYNTHETIC, seeded vectors" if r.get("seeded_vectors") else "SYNTHETIC"


def quality_lines(records: list[dict]) -> list[str]:
    """The quantizer's numbers per run: fit time and duplicate rates (quantize), K_eff per level (diagnose)."""
    runs: dict[tuple, dict] = {}
    for r in records:
        if r.get("quality"):
            key = (r["size"], data_label(r), r["backend"], " ".join(r.get("overrides") or []) or "-")
            runs.setdefault(key, {"items": r["items"]}).update(r["quality"])
    if not runs:
        return []
    lines = ["", "## The quantizer at each size", "",
             "From the run's quantize.json and diagnose summary.json. dup before = items sharing their full code "
             "before collision resolution; after = after it (0 when every item got a unique ID). K_eff per level: "
             "the DRQ effective capacity (Monte-Carlo kernel) out of the level's codebook size.", "",
             "| size | data | items | backend | overrides | method | fit s | dup before | dup after | K_eff l0 | "
             "K_eff l1 | K_eff l2 |", "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (size, data, backend, ov), q in runs.items():
        lines.append(f"| {size} | {data} | {fmt(q['items'])} | {backend} | {ov} | {q.get('method') or '-'} | "
                     f"{fmt(q.get('fit_seconds'))} | {fmt(q.get('pre_duplicate_rate'), 4)} | "
                     f"{fmt(q.get('final_duplicate_rate'), 4)} | {fmt(q.get('K_eff_l0'))} | "
                     f"{fmt(q.get('K_eff_l1'))} | {fmt(q.get('K_eff_l2'))} |")
    return lines


def run_lines(records: list[dict]) -> list[str]:
    """The `--until run` records: the whole flow's wall / CPU / peak, then its steps' seconds and the recommender's
    test metrics (full ranking) from the run summary."""
    runs = [r for r in records if r["stage"] == "run"]
    if not runs:
        return []
    lines = ["", "## End to end: one `semid run` (ingest -> validate -> embed -> quantize -> diagnose -> gate -> "
             "register -> recommender trained, evaluated, gated, promoted)", ""]
    for r in runs:
        summ = r.get("summary") or {}
        lines += [f"**{r['size']}** ({data_label(r)}, {fmt(r['items'])} items, {fmt(r.get('interactions'))} "
                  f"interactions; {' '.join(r.get('overrides') or []) or 'defaults'}): rc {r['rc']}, wall "
                  f"{fmt(r['wall_s'])} s, CPU {fmt(r['cpu_s'])} s, peak anon {fmt(r['peak_anon_mb'])} MB "
                  f"(VmHWM sum {fmt(r['hwm_sum_mb'])} MB), {r['processes']} processes.", ""]
        if not summ:
            lines += ["The flow did not finish; the log's last lines:", "", "```", *(r.get("log_tail") or []),
                      "```", ""]
            continue
        if summ.get("gate_failed"):  # rc 1 with a summary: a gate stopped the run (nothing promoted)
            lines += [f"Stopped by a gate (nothing promoted): {summ['gate_failed']}", ""]
        lines += ["| step | state | seconds |", "|---|---|---:|"]
        for step, secs in (summ.get("seconds") or {}).items():
            lines.append(f"| {step} | {(summ.get('steps') or {}).get(step, '-')} | {fmt(float(secs))} |")
        metrics = (summ.get("recommender") or {}).get("metrics") or {}
        keys = [k for k in sorted(metrics) if k.startswith(("test_full", "baseline_test_full")) and
                k.endswith("@10")] + \
               [k for k in ("epochs", "best_epoch", "seconds_per_epoch", "eval_users") if k in metrics]
        if keys:
            lines += ["", "| recommender metric | value |", "|---|---:|"]
            lines += [f"| {k} | {fmt(float(metrics[k]), 4)} |" for k in keys]
        lines.append("")
    return lines


def report(records: list[dict], meta: dict) -> list[str]:
    order = {s: i for i, s in enumerate([*STAGES[:2], "fetch+validate", *STAGES[2:]])}
    lines = ["# Scale: the data stages from 10k to 100k+ items", "",
             f"Machine: {meta['platform']}, {meta['cpus']} CPUs, torch {meta['torch']}, Python {meta['python']}.",
             "Runs (command, date, git sha, load average 1/5/15 min before -> after):", ""]
    for run in meta["runs"]:
        cpu = cpu_label(run) if run.get("cpu") else "CPU not recorded"
        lines.append(f"- `{run['command']}` — {run['date']}, git {run['git_sha']}, {cpu}, load {run['load_before']} -> "
                     f"{run['load_after']}, ONNX export warm-up {run['onnx_warmup_s']} s (outside the numbers)")
    lines += ["", "10k = amazon-beauty (real: 12,101 items, 198,502 interactions). 100k / 1m = **SYNTHETIC** "
              "catalogues from benchmarks/synthetic.py (seed 0; 100k items / 1M interactions, 1M / 10M, "
              "100m: 1M / 100M): real "
              "Amazon titles recombined, Zipf popularity; not real data.",
              "Each stage is one `semid` subprocess; a fresh data.root and embed.cache_dir per run, so every text "
              "is encoded (the embed row's `encoded` column). Peak anon RSS = the peak over 0.2 s samples of "
              "RssAnon summed over the stage's process tree; VmHWM (summed per process) is inflated by "
              "memory-mapped files and only for reference. CPU s = user + sys of the tree; CPU s above wall s "
              "means more than one core was busy. `generate` is the synthetic generator, not a pipeline stage.",
              ""]
    key = lambda r: ({"10k": 0, "100k": 1, "1m": 2, "100m": 3}.get(r["size"], 9), r.get("task_runner") or "",  # noqa: E731
                     r["backend"], tuple(r.get("overrides") or []), r.get("cpu") or "", order.get(r["stage"], 99))
    lines += ["| size | data | items | interactions | runner | backend | overrides | CPU | stage | wall s | CPU s | "
              "items/s | peak anon MB | VmHWM sum MB | procs | encoded |",
              "|---|---|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=key):
        enc = (r.get("embed_manifest") or {}).get("encoded")
        lines.append(f"| {r['size']} | {data_label(r)} | {fmt(r['items'])} | "
                     f"{fmt(r.get('interactions'))} | "
                     f"{r.get('task_runner') or 'CLI'} | {r['backend']} | {' '.join(r.get('overrides') or []) or '-'}"
                     f" | {cpu_label(r)} | {r['stage']} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | "
                     f"{fmt(r['items_per_s'])} | "
                     f"{fmt(r['peak_anon_mb'])} | {fmt(r['hwm_sum_mb'])} | {r['processes']} | "
                     f"{fmt(enc) if enc is not None else '-'} |")
    lines += quality_lines(records) + run_lines(records)
    slopes = [s for s in add_slopes(records) if s["stage"] != "generate"]
    lines += ["", "## Log-log slopes between consecutive sizes", "",
              "slope = log(t2/t1) / log(n2/n1) over the item counts after validation (over the interaction counts "
              "where the item counts are equal, 1m -> 100m): 1 = linear, 0 = flat. Only sizes measured on the same "
              "CPU (model, int8 kernel class) are paired; `-` = records from before the CPU was recorded.", "",
              "| stage | runner | backend | overrides | CPU | sizes | by | wall slope | CPU slope | peak anon slope |",
              "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for s in sorted(slopes, key=lambda s: (order.get(s["stage"], 99), s["task_runner"] or "")):
        lines.append(f"| {s['stage']}{' (seeded vectors)' if s.get('seeded_vectors') else ''} | "
                     f"{s['task_runner'] or 'CLI'} | {s['backend']} | "
                     f"{' '.join(s['overrides']) or '-'} | {cpu_label(s)} | {s['from']} -> {s['to']} | "
                     f"{s.get('by', 'items')} | "
                     f"{fmt(s['wall_slope'], 2)} | "
                     f"{fmt(s['cpu_slope'], 2)} | {fmt(s['anon_slope'], 2)} |")
    for size in SIZES:
        embeds = [r for r in records if r["stage"] == "embed" and r["size"] == size and not r.get("seeded_vectors")]
        if len({r.get("task_runner") for r in embeds}) < 2:
            continue
        lines += ["", f"## Embed at {size}: CLI vs flow task runners", "",
                  "CLI = `semid embed` (the shard plan in flow.workers threads in one process); local / dask = "
                  "`semid prepare NAME --until embed` with that flow.task_runner (Prefect flow; dask: a "
                  "LocalCluster of flow.workers processes). Same backend, overrides and fresh cache.", "",
                  "| runner | date | wall s | CPU s | items/s | peak anon MB | VmHWM sum MB | procs |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(embeds, key=lambda r: r.get("task_runner") or ""):
            lines.append(f"| {r.get('task_runner') or 'CLI (semid embed)'} | {r['date'][:10]} | {fmt(r['wall_s'])} | "
                         f"{fmt(r['cpu_s'])} "
                         f"| {fmt(r['items_per_s'])} | {fmt(r['peak_anon_mb'])} | {fmt(r['hwm_sum_mb'])} | "
                         f"{r['processes']} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["10k", "100k"], choices=list(SIZES))
    ap.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    ap.add_argument("--task-runner", default=None, choices=["local", "dask"],
                    help="embed through the flow (semid prepare --until embed) with this flow.task_runner")
    ap.add_argument("--set", action="append", default=[], help="pipeline override, e.g. quantizer.method=rqkmeans")
    ap.add_argument("--until", default="diagnose", choices=["validate", "embed", "quantize", "diagnose", "run"],
                    help="last stage measured (embed: e.g. only the task-runner comparison; validate: ingest only; "
                         "run: after fetch + validate, the whole retrain flow as one `semid run` - ingest ... "
                         "register, recommender trained and evaluated - with its per-step seconds)")
    ap.add_argument("--out", default="scale", help="results name: benchmarks/results/OUT.{json,md}")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/semid-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch data (default: deleted)")
    ap.add_argument("--vectors", action="store_true",
                    help="synthetic sizes: SYNTHETIC item vectors (real item embeddings + noise at the nearest-"
                         "neighbour scale, synthetic.py --vectors) seeded into the run's embedding cache: embed "
                         "only joins the cache, quantize and diagnose measure the quantizer at that size without "
                         "the embedding pass (needs --backend torch: the real vectors are the torch encoder's)")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    args = ap.parse_args(argv)
    if args.vectors and (args.backend != "torch" or args.task_runner or args.until in ("validate", "embed")):
        ap.error("--vectors needs --backend torch (the seeded vectors come from the torch encoder), no "
                 "--task-runner, and --until quantize, diagnose or run")

    sys.path.insert(0, str(REPO))
    from benchmarks.quantizers import machine, write_report

    if args.render:
        doc = json.loads((OUT / f"{args.out}.json").read_text())
        write_report(args.out, report(doc["records"], {**doc["machine"], "runs": doc["runs"]}))
        return

    from semid.models.encoder import int8_kernels
    from semid.tasks.fsutil import git_sha

    meta = machine()
    run = {"command": shlex.join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
           "git_sha": git_sha(), "date": meta["date"], "cpu": meta["cpu"], "int8_kernels": int8_kernels(),
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    onnx_dir = args.scratch / "onnx"
    run["onnx_warmup_s"] = warm_onnx(args.backend, onnx_dir) if args.until != "validate" else 0.0
    path = OUT / f"{args.out}.json"
    old = json.loads(path.read_text()) if path.exists() else {"runs": [], "records": []}
    records = []
    try:
        for size in args.sizes:
            records += run_size(size, args, args.scratch, onnx_dir, run)
            save(path, old, records, run, meta, args.out, write_report)  # after every size: partial results survive
    finally:
        if not args.keep:
            shutil.rmtree(onnx_dir, ignore_errors=True)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def save(path: Path, old: dict, records: list[dict], run: dict, meta: dict, name: str, write_report) -> None:
    run = {**run, "load_after": [round(x, 2) for x in os.getloadavg()]}
    fresh = {record_key(r) for r in records}
    merged = [r for r in old["records"] if record_key(r) not in fresh] + records
    runs = [r for r in old["runs"] if r["command"] != run["command"] or r["date"] != run["date"]] + [run]
    runs = [r for r in runs if any(x["command"] == r["command"] and x["date"] == r["date"] for x in merged)]
    doc = {"machine": {k: meta[k] for k in ("platform", "cpus", "torch", "python")}, "runs": runs, "records": merged}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    write_report(name, report(merged, {**doc["machine"], "runs": runs}))


if __name__ == "__main__":
    main()
