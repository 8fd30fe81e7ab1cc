"""The embed step's batching: batches cut from the texts sorted by token count (semid.tasks.embed.encode_texts
since this benchmark) against the loop it replaced (chunks of 4 x embed.batch_size texts in item order, each
given to the encoder's encode, which sorts a chunk by characters): texts/s, padded tokens, and the vectors' cosine.

The padded tokens (the batch's longest text x its size, summed) are the work the transformer does, counted with
the model's tokenizer: a machine-independent measure of what the order saves. texts/s is the median of `--reps`
paired repetitions (the two loops back to back, order alternating), the speed-up the median of per-repetition
ratios. The new loop runs through encode_texts with an empty embedding cache in a temporary folder each time, so its
cache writes are paid; the old loop is copied here as it was (git 13d6189, tasks/embed.py). Sets its dataset up
(benchmarks/prepare.py; `SEMID_DATA_MIRROR` where offline).

    python benchmarks/embed_batching.py [--dataset amazon-scientific] [--texts N] [--reps 3] [--backend torch]

Writes benchmarks/results/embed_batching.{json,md} (one record per dataset and backend, replacing that pair's).
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
from semid.models.encoder import BACKENDS, token_counts, token_order  # noqa: E402
from semid.models.onnx_encoder import cosine  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.embed import encode_texts, load_encoder  # noqa: E402
from semid.tasks.fsutil import git_sha  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
RESULTS = OUT / "embed_batching.json"


def old_loop(encoder, texts: list[str], batch: int) -> np.ndarray:
    """The embed step's loop before this benchmark: chunks of 4 batches in input order, one encode call each."""
    chunk = batch * 4
    return np.concatenate([encoder.encode(texts[s:s + chunk], batch_size=batch, show_progress_bar=False,
                                          convert_to_numpy=True) for s in range(0, len(texts), chunk)])


def padded_tokens(st, texts: list[str], batch: int) -> dict[str, int]:
    """Tokens the texts hold, and the tokens each loop's batches compute (the longest text x the batch size)."""
    counts = token_counts(st, texts)

    def work(order: np.ndarray) -> int:
        return int(sum(counts[order[s:s + batch]].max() * len(order[s:s + batch]) for s in range(0, len(order), batch)))

    old = 0
    for s in range(0, len(texts), batch * 4):  # SentenceTransformer.encode: longest first by characters, per chunk
        idx = np.arange(s, min(s + batch * 4, len(texts)))
        old += work(idx[np.argsort([-len(texts[i]) for i in idx], kind="stable")])
    return {"tokens": int(counts.sum()), "old": old, "new": work(token_order(st, texts))}


def measure(dataset: str, n: int | None, reps: int, backend: str) -> dict:
    base = load_config(PARAMS)
    texts = list(dict.fromkeys(item_texts(dataset)))[:n]  # distinct texts, as the embed step encodes them
    batch = base.embed.batch_size
    with tempfile.TemporaryDirectory(prefix="semid-batching-") as tmp:
        encoder = load_encoder(base.embed.model, backend, str(Path(tmp) / "onnx"), torch.get_num_threads())
        encoder.encode(texts[:batch], batch_size=batch)  # warm-up
        work = padded_tokens(getattr(encoder, "st", encoder), texts, batch)
        speed: dict[str, list[float]] = {"old": [], "new": []}
        vectors = {}
        for rep in range(reps):
            for loop in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                t0 = time.perf_counter()
                if loop == "old":
                    vectors[loop] = old_loop(encoder, texts, batch)
                else:
                    cfg = load_config(PARAMS, [f"embed.cache_dir={tmp}/cache-{rep}", f"embed.backend={backend}"])
                    vectors[loop] = encode_texts(texts, cfg, encoder=encoder)[0]
                speed[loop].append(len(texts) / (time.perf_counter() - t0))
            print(f"  rep {rep + 1}/{reps}: old {speed['old'][-1]:.1f}, new {speed['new'][-1]:.1f} texts/s", flush=True)
    ratios = [b / a for a, b in zip(speed["old"], speed["new"], strict=True)]
    cos = cosine(vectors["new"], vectors["old"])
    return {"dataset": dataset, "backend": backend, "texts": len(texts), "batch_size": batch,
            "mean_chars": float(np.mean([len(t) for t in texts])), **{f"tokens_{k}": v for k, v in work.items()},
            "old_texts_per_s": float(np.median(speed["old"])), "new_texts_per_s": float(np.median(speed["new"])),
            "speedup": float(np.median(ratios)), "speedups": ratios, "reps": reps,
            "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "max_abs_diff": float(np.abs(vectors["new"] - vectors["old"]).max())}


def padding(r: dict, loop: str) -> str:
    """How many more tokens a loop's batches computed than the texts hold, as '+x %'."""
    return f"+{r[f'tokens_{loop}'] / r['tokens_tokens'] - 1:.1%}"


def write(records: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(records, indent=1) + "\n")
    lines = ["# The embed step's batching: by token count vs the old chunks", "",
             "Old: chunks of 4 x batch texts in item order, each sorted by characters inside "
             "SentenceTransformer.encode (or the ONNX encoder). New: `encode_texts`, batches cut from all new texts "
             "sorted by token count, through an empty embedding cache. Padded tokens = what the transformer computes "
             "(the batch's longest text x its size); texts/s the median of paired repetitions, speed-up the median of "
             "their ratios. Each row's command, machine and git sha below the table.", "",
             "| dataset | backend | texts | mean chars | tokens | padded old | padded new | texts/s old | texts/s new "
             "| speed-up (per rep) | cosine new vs old: mean / min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['backend']} | {r['texts']} | {r['mean_chars']:.0f} | {r['tokens_tokens']} "
                     f"| {padding(r, 'old')} | {padding(r, 'new')} | {r['old_texts_per_s']:.1f} "
                     f"| {r['new_texts_per_s']:.1f} | {r['speedup']:.2f} "
                     f"({', '.join(f'{x:.2f}' for x in r['speedups'])}) | "
                     f"{format(r['cos_mean'], '.7f') if 'cos_mean' in r else 'not recorded'} / {r['cos_min']:.7f} |")
    lines.append("")
    for r in records:
        lines.append(f"- {r['dataset']} / {r['backend']}: `{r['command']}`; {r['machine']}, {r['cpu']}, "
                     f"{r['threads']} threads; {r['date']}; git {r['git_sha']}; load before {r['load_before']}.")
    write_report("embed_batching", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-scientific")
    ap.add_argument("--texts", type=int, default=None, help="the first N distinct texts by item id (default all)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta, load_before = machine(), [round(x, 2) for x in os.getloadavg()]
    record = measure(args.dataset, args.texts, args.reps, args.backend)
    record.update({"command": shlex.join(["python", "benchmarks/embed_batching.py", *sys.argv[1:]]),
                   "git_sha": git_sha(12), "date": meta["date"], "machine": machine_label(meta), "cpu": meta["cpu"],
                   "threads": torch.get_num_threads(), "load_before": load_before})
    r = record
    print(f"{r['dataset']} {r['backend']}: {r['old_texts_per_s']:.1f} -> {r['new_texts_per_s']:.1f} texts/s "
          f"(x{r['speedup']:.2f}); padded tokens {padding(r, 'old')} -> {padding(r, 'new')}; "
          f"cosine min {r['cos_min']:.7f}")
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    records = [r for r in records if (r["dataset"], r["backend"]) != (record["dataset"], record["backend"])]
    write([*records, record])
    print(f"wrote {RESULTS} and embed_batching.md")


if __name__ == "__main__":
    main()
