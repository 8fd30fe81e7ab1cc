"""SASRec training-recipe ablations: named variants (config overrides) x item representations x seeds on one
dataset; the recipe is chosen on validation NDCG@10 (history masked), and the test numbers are reported beside.

Each finished run appends one record, with its per-epoch validation curve, to benchmarks/results/recipe.jsonl (so
parallel invocations, e.g. one per seed with --threads 1, can share the file); recipe.md is rendered from all
records: mean +- std over seeds per (dataset, variant, item repr), the most-popular baseline of the same split, each
record's codebook hash and git sha, then the hand-written recipe.findings.md.

    python benchmarks/recipe.py ml-100k --variant default --variant 'windows:recommend.every_window=true' \
        --reprs unified --seeds 0 1 2 3 4
    python benchmarks/recipe.py --render
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
RECORDS = OUT / "recipe.jsonl"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name:key=value,key=value' -> (name, ['key=value', ...]); 'default' has no overrides. A comma splits only
    where a new key= follows, so a YAML list value stays whole: 'b:recommend.betas=[0.9,0.98],recommend.lr=1e-3'."""
    name, _, sets = text.partition(":")
    return name, [s for s in re.split(r",(?=[A-Za-z_][\w.]*=)", sets) if s]


def run(name: str, variant: str, sets: list[str], item_repr: str, seed: int) -> dict:
    from benchmarks.recommenders import codebook_sha
    from semid.tasks.config import load_config
    from semid.tasks.fsutil import git_sha
    from semid.tasks.recommend import recommend

    cfg = load_config(PARAMS, [f"data.dataset={name}", *sets, f"recommend.item_repr={item_repr}",
                               f"recommend.seed={seed}"])
    tag, curve = f"{variant}/{item_repr}/seed {seed}", []

    def on_epoch(r: dict) -> None:
        curve.append(round(r[f"valid_{cfg.recommend.monitor}"], 5))
        print(f"  {tag} epoch {r['epoch']}: " + " ".join(f"{k} {v:.4g}" for k, v in r.items() if k != "epoch"),
              flush=True)

    out = recommend(name, cfg, out=Path(tempfile.mkdtemp()) / "rec", on_epoch=on_epoch)
    m = out["metrics"]
    keys = [f"{split}_{proto}_{k}" for split in ("valid", "test") for proto in ("full", "full_masked")
            for k in ("recall@10", "ndcg@10")]
    return {"dataset": name, "variant": variant, "sets": sets, "item_repr": item_repr, "seed": seed,
            **{k: m[k] for k in keys}, **{f"baseline_{k}": m[f"baseline_{k}"] for k in keys},
            "epochs": m["epochs"], "best_epoch": m["best_epoch"], "seconds_per_epoch": m["seconds_per_epoch"],
            "valid_curve": curve,  # the raw monitored validation score of every epoch
            "codebook_sha256": codebook_sha(cfg, name) if item_repr != "id" else None,
            "git": git_sha(12)}


def stats(values: list[float]) -> str:
    a = np.array(values, dtype=float)
    return f"{a.mean():.4f} +- {a.std():.4f}"


def group_key(r: dict) -> tuple:
    """One table row per (dataset, variant, item repr, codebook, CPU): seeds are averaged only over runs on the same
    semantic IDs and the same CPU model (a codebook rebuilt on another machine can differ; records older than
    this field say 'not recorded')."""
    return (r["dataset"], r["variant"], r["item_repr"], r.get("codebook_sha256"), r.get("cpu", "not recorded"))


def render() -> None:
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    metas = list(dict.fromkeys((r["machine"], r["date"][:10]) for r in records))
    lines = ["# SASRec recipe ablations", "",
             "Chosen on **validation** NDCG@10 (full ranking, history masked); test shown beside, never used to "
             "choose. Mean +- std over seeds; min/max = worst seed's test masked N@10 over the best seed's. "
             "most-pop = the most-popular baseline on the same split (test, masked).", "",
             "Machines and dates: " + "; ".join(f"{m} ({d})" for m, d in metas) + ".", "", "Commands:", ""]
    lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in records)]
    lines += ["", "| dataset | variant | repr | seeds | valid N@10 (masked) | test R@10 masked | test N@10 masked | "
              "min/max | test R@10 unmasked | test N@10 unmasked | most-pop N@10 masked | epochs (best) | s/epoch | "
              "codebook | CPU | git |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, variant, item_repr, codebook, cpu), rs in groups.items():
        test = [r["test_full_masked_ndcg@10"] for r in rs]
        lines.append(
            f"| {name} | {variant} | {item_repr} | {len(rs)} | {stats([r['valid_full_masked_ndcg@10'] for r in rs])} | "
            f"{stats([r['test_full_masked_recall@10'] for r in rs])} | {stats(test)} | {min(test) / max(test):.2f} | "
            f"{stats([r['test_full_recall@10'] for r in rs])} | {stats([r['test_full_ndcg@10'] for r in rs])} | "
            f"{rs[0]['baseline_test_full_masked_ndcg@10']:.4f} | "
            f"{'/'.join('{}({})'.format(r['epochs'], r['best_epoch']) for r in rs)} | "
            f"{np.mean([r['seconds_per_epoch'] for r in rs]):.1f} | {codebook or '-'} | {cpu} | "
            f"{', '.join(dict.fromkeys(r['git'] for r in rs))} |")
    lines += ["", "Variants:", ""]
    lines += [f"- `{v}`: {', '.join(f'`{s}`' for s in sets) or 'params.yaml as committed'}"
              for v, sets in dict.fromkeys((r["variant"], tuple(r["sets"])) for r in records)]
    write_report("recipe", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", nargs="?")
    ap.add_argument("--variant", action="append", default=[], help="NAME[:key=value,key=value] (repeatable)")
    ap.add_argument("--reprs", nargs="+", default=["unified"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="only rewrite recipe.md from recipe.jsonl")
    args = ap.parse_args()
    if not args.render:
        torch.set_num_threads(args.threads)
        prepare_dataset(args.dataset, "validate" if set(args.reprs) == {"id"} else "quantize")
        meta = machine()
        for variant, sets in map(parse_variant, args.variant or ["default"]):
            for item_repr in args.reprs:
                for seed in args.seeds:
                    r = run(args.dataset, variant, sets, item_repr, seed)
                    r.update({"machine": machine_label(meta),
                              "cpu": meta["cpu"],
                              "date": machine()["date"], "torch_threads": torch.get_num_threads(),
                              "command": shlex.join(["python", "benchmarks/recipe.py", *sys.argv[1:]])})
                    with RECORDS.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{variant} {item_repr} seed {seed}: valid {r['valid_full_masked_ndcg@10']:.4f} test "
                          f"{r['test_full_masked_ndcg@10']:.4f} unmasked {r['test_full_ndcg@10']:.4f} most-pop "
                          f"{r['baseline_test_full_masked_ndcg@10']:.4f} epochs {r['epochs']}({r['best_epoch']})",
                          flush=True)
    if RECORDS.exists():
        render()


if __name__ == "__main__":
    main()
