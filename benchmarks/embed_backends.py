"""Embedding backends: embed.backend torch (sentence-transformers) vs onnx (fp32) vs onnx-int8 on real item texts:
texts/s, the ratio to torch and the cosine of each backend's vectors to torch's.

Each of `--reps` repetitions encodes the same N texts once per backend, back to back (the order rotates between
repetitions); texts/s is the median over repetitions and the ratio is the median of the per-repetition ratios, which
is robust to other load on the machine drifting during the measurement. Encoders are called bare (no embedding
cache), with embed.batch_size and the same thread count (--threads, default torch's). The ONNX export is made into a
temporary folder, so its one-time cost is measured too. Sets its dataset up (benchmarks/prepare.py: fetch +
validate; `SEMID_DATA_MIRROR` where offline).

    python benchmarks/embed_backends.py [--dataset amazon-scientific] [--texts 512] [--reps 5] [--threads N]

Writes benchmarks/results/embed_backends.{json,md} with machine, date, command, git sha and the load average.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, item_texts  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402
from semid.models.encoder import BACKENDS, int8_kernels  # noqa: E402
from semid.models.onnx_encoder import cosine  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.embed import load_encoder  # noqa: E402
from semid.tasks.fsutil import git_sha  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TARGET = {"onnx": "ratio >= 1.7, mean cosine >= 0.9999", "onnx-int8": "ratio ~3.5, mean cosine ~0.993"}


def paired_passes(encoders: dict, texts: list[str], batch: int, reps: int) -> dict[str, list[float]]:
    """texts/s of each encoder over the texts, `reps` repetitions of all of them back to back, the order rotating
    between repetitions (the VM's speed drifts between minutes; a repetition's encoders see the same drift)."""
    names = list(encoders)
    speed: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            encoders[name].encode(texts, batch_size=batch, show_progress_bar=False)
            speed[name].append(len(texts) / (time.perf_counter() - t0))
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{b} {speed[b][-1]:.1f}" for b in names) + " texts/s",
              flush=True)
    return speed


def measure(texts: list[str], batch: int, reps: int, onnx_dir: str, threads: int) -> list[dict]:
    """One record per backend: texts/s per repetition, median, median ratio to torch, cosine to torch."""
    encoders = {"torch": load_encoder("all-MiniLM-L6-v2")}
    start = time.perf_counter()
    encoders["onnx"] = load_encoder("all-MiniLM-L6-v2", "onnx", onnx_dir, threads)  # exports into onnx_dir (empty)
    export_s = time.perf_counter() - start
    encoders["onnx-int8"] = load_encoder("all-MiniLM-L6-v2", "onnx-int8", onnx_dir, threads)
    vectors = {}
    for name, enc in encoders.items():  # warm-up, and the vectors compared
        enc.encode(texts[:32], batch_size=batch)
        vectors[name] = np.asarray(enc.encode(texts, batch_size=batch, show_progress_bar=False), dtype=np.float32)
    speed = paired_passes(encoders, texts, batch, reps)
    records = []
    for name in BACKENDS:
        ratios = [s / t for s, t in zip(speed[name], speed["torch"], strict=True)]
        cos = cosine(vectors[name], vectors["torch"])
        records.append({"backend": name, "texts_per_s": float(np.median(speed[name])), "texts_per_s_reps": speed[name],
                        "ratio_vs_torch": float(np.median(ratios)), "ratios": ratios,
                        "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                        "export_seconds": round(export_s, 1) if name == "onnx" else None})
    return records


def write(records: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "embed_backends.json").write_text(json.dumps(records, indent=1) + "\n")
    r0 = records[0]
    lines = ["# Embedding backends", "",
             f"Machine: {r0['machine']}, Python {r0['python']}, {r0['threads']} threads per backend "
             f"(torch and onnxruntime intra-op). CPU: {r0.get('cpu', 'not recorded')}, int8 kernels: "
             f"{r0.get('int8_kernels', 'not recorded')} (the class the int8 encoder identity names). "
             f"Date: {r0['date']}. Git: {r0['git_sha']}.",
             f"Command: `{r0['command']}`", "",
             f"{r0['texts']} {r0['dataset']} item texts (the first by item id, mean {r0['mean_chars']:.0f} "
             "characters), "
             f"all-MiniLM-L6-v2, batch size {r0['batch_size']}, median of {r0['reps']} paired repetitions (the three "
             "backends back to back, order rotating); ratio = median of the per-repetition ratios to torch; cosine "
             "to the torch backend's vectors of the same texts. Encoders called bare (no embedding cache).",
             f"Load average over 1/5/15 min: {r0['load_before']} before, {r0['load_after']} after. Above the "
             "core count, other jobs shared the CPUs: absolute texts/s are then low and noisy, the paired ratios are "
             "the comparable number, and they too depend on how much CPU each backend gets.", "",
             "| backend | texts/s | x torch | cosine mean | cosine min | 1 - cosine min | per-repetition ratios | "
             "issue target |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['backend']} | {r['texts_per_s']:.1f} | {r['ratio_vs_torch']:.2f} | {r['cos_mean']:.6f} | "
                     f"{r['cos_min']:.6f} | {1 - r['cos_min']:.1e} | {', '.join(f'{x:.2f}' for x in r['ratios'])} | "
                     f"{TARGET.get(r['backend'], '-')} |")
    export = next(r["export_seconds"] for r in records if r["backend"] == "onnx")
    lines += ["", "One-time ONNX export (the first onnx load with an empty export folder: model load, "
              f"torch.onnx.export, quantize_dynamic, sample check): {export:.0f} s; later runs load the cached export."]
    write_report("embed_backends", lines)


def encoder_parser() -> argparse.ArgumentParser:
    """The options the encoder benchmarks share: which texts, how many repetitions, how many threads."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-scientific")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with the model hub off and torch's threads set (onnxruntime takes torch's count)."""
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    args = parse(encoder_parser())
    base, texts = load_config(PARAMS), item_texts(args.dataset, args.texts)
    meta, load_before = machine(), [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="semid-onnx-") as onnx_dir:
        records = measure(texts, base.embed.batch_size, args.reps, onnx_dir, torch.get_num_threads())
    common = {"dataset": args.dataset, "texts": len(texts), "mean_chars": float(np.mean([len(t) for t in texts])),
              "reps": args.reps, "batch_size": base.embed.batch_size, "threads": torch.get_num_threads(),
              "command": shlex.join(["python", "benchmarks/embed_backends.py", *sys.argv[1:]]),
              "git_sha": git_sha(), "date": meta["date"], "python": meta["python"],
              "machine": machine_label(meta), "cpu": meta["cpu"], "int8_kernels": int8_kernels(),
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}
    records = [{**common, **r} for r in records]
    for r in records:
        print(f"{r['backend']:9s} {r['texts_per_s']:7.1f} texts/s  x{r['ratio_vs_torch']:.2f}  "
              f"cosine mean {r['cos_mean']:.6f} min {r['cos_min']:.6f}")
    write(records)
    print(f"wrote {OUT / 'embed_backends.json'} and embed_backends.md")


if __name__ == "__main__":
    main()
