"""Embed memory: embed.onnx_memory arena vs plain (no arena) vs arena-shrink, as the embed step runs its shards
(tasks/embed.encode_texts in one thread per shard, each with its worker encoder, through an empty cache). Each
configuration runs in its own fresh process so the peak anonymous RSS (VmHWM is inflated by the mapped model file)
belongs to it alone; texts/s comes from the same run. Repetitions rotate the order so load drift hits all alike.

    python benchmarks/embed_memory.py [--dataset amazon-beauty] [--texts 4096 12101] [--reps 1] [--backend onnx-int8]
        [--order first|longest] [--modes plain ...] [--out embed_memory]

--order longest takes the N texts with the most characters instead of the first N: the same count with the
catalogue's longest inputs, which separates memory that grows with the number of texts from memory that grows
with the largest batch shape (tokens per text, capped at the model's max_seq_length).
Writes benchmarks/results/OUT.{json,md} (machine, date, command, git sha, load average).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, write_report  # noqa: E402
from semid.models.onnx_encoder import MEMORY  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def child(args: argparse.Namespace) -> None:
    """One configuration in this process, on the embed step's own path: `threads` shard threads, each with its
    worker encoder (loaded inside the timed region, as in the step), encoding through an empty embedding cache."""
    from semid.tasks.config import load_config
    from semid.tasks.embed import _item_texts, _worker_encoder, encode_texts, set_task_threads

    cfg = load_config(PARAMS, [f"data.dataset={args.dataset}", f"data.root={args.root}",
                               f"embed.backend={args.backend}", f"embed.onnx_dir={args.onnx_dir}",
                               "embed.onnx_threads=1", f"embed.onnx_memory={args.memory}",
                               f"embed.cache_dir={tempfile.mkdtemp(dir=args.root)}"])
    texts = _item_texts(cfg, args.dataset)[1]
    if args.order == "longest":
        texts = sorted(texts, key=len, reverse=True)
    texts = texts[: args.texts[0]]
    shards = [texts[i:: args.threads] for i in range(args.threads)]

    def run(shard: list[str]) -> None:
        set_task_threads(1)
        encode_texts(shard, cfg, encoder=_worker_encoder(cfg))

    start = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(run, shards))  # a shard's exception ends the run, as in tasks/embed.embed
    wall = time.perf_counter() - start
    peak = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM")))
    print(json.dumps({"wall_s": wall, "texts": len(texts), "vmhwm_mb": peak / 1024}))


def one(args: argparse.Namespace, memory: str, texts: int, onnx_dir: str) -> dict:
    from benchmarks.scale import TreeSampler

    cmd = [sys.executable, __file__, "--child", "--memory", memory, "--onnx-dir", onnx_dir, "--root", args.root,
           "--dataset", args.dataset, "--texts", str(texts), "--backend", args.backend,
           "--threads", str(args.threads), "--order", args.order]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid, 0.1) as sampler:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"the {memory} run failed (rc {proc.returncode})")
    r = json.loads(out.strip().splitlines()[-1])
    return {"memory": memory, **r, "texts_per_s": r["texts"] / r["wall_s"],
            "peak_anon_mb": sampler.result()["peak_anon_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--texts", type=int, nargs="+", default=[4096, 12101])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="shard threads (the flow's flow.workers)")
    ap.add_argument("--backend", default="onnx-int8", choices=["onnx", "onnx-int8"])
    ap.add_argument("--order", default="first", choices=["first", "longest"], help="the first N texts or the N longest")
    ap.add_argument("--modes", nargs="+", default=list(MEMORY), choices=list(MEMORY), help="embed.onnx_memory modes")
    ap.add_argument("--out", default="embed_memory", help="results name: benchmarks/results/OUT.{json,md}")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory", default="arena", help=argparse.SUPPRESS)
    ap.add_argument("--onnx-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.render:
        return render(args.out)
    from semid.tasks.embed import onnx_export
    from semid.tasks.fsutil import git_sha

    command = shlex.join(["python", "benchmarks/embed_memory.py", *sys.argv[1:]])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        args.root = str(Path(tmp) / "data")
        prepare_dataset(args.dataset, "validate", [f"data.root={args.root}"])
        onnx_dir = str(Path(tmp) / "onnx")
        onnx_export("all-MiniLM-L6-v2", None, onnx_dir)  # once, outside the measured runs
        records = []
        for n in args.texts:
            for rep in range(args.reps):
                modes = tuple(args.modes)
                for memory in modes[rep % len(modes):] + modes[:rep % len(modes)]:
                    records.append({"rep": rep, **one(args, memory, n, onnx_dir)})
                    print(json.dumps(records[-1]), flush=True)
    m = machine()
    meta = {"machine": f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}", "date": m["date"],
            "git": git_sha(12), "command": command.strip(), "load_before": load_before,
            "load_after": os.getloadavg(), "dataset": args.dataset, "backend": args.backend, "threads": args.threads,
            "order": args.order}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    render(args.out)


def render(name: str = "embed_memory") -> None:
    """benchmarks/results/NAME.md from NAME.json and the hand-written NAME.findings.md."""
    data = json.loads((OUT / f"{name}.json").read_text())
    meta, records = data["meta"], data["records"]
    sizes = " and ".join(map(str, dict.fromkeys(r["texts"] for r in records)))
    lines = ["# Embed memory: embed.onnx_memory (onnxruntime's CPU memory arena or none)", "",
             f"Machine: {meta['machine']}. Date: {meta['date']}. Git: {meta['git']}. Command: `{meta['command']}`. "
             f"Load average before/after: {[round(x, 2) for x in meta['load_before']]} / "
             f"{[round(x, 2) for x in meta['load_after']]}.", "",
             f"The {'longest' if meta.get('order') == 'longest' else 'first'} {sizes} item texts of {meta['dataset']} "
             f"(real), backend {meta['backend']}, {meta['threads']} "
             "shard threads through the embed step's encode_texts, each with its own encoder and 1 intra-op thread, an "
             "empty embedding cache, encoder loading included. "
             "Peak anon MB = the peak of RssAnon over 0.1 s samples of the process.", "",
             "| texts | rep | onnx_memory | wall s | texts/s | peak anon MB | VmHWM MB |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['texts']} | {r['rep']} | {r['memory']} | {r['wall_s']:.1f} | {r['texts_per_s']:.1f} | "
                     f"{r['peak_anon_mb']:.0f} | {r['vmhwm_mb']:.0f} |")
    write_report(name, lines)


if __name__ == "__main__":
    main()
