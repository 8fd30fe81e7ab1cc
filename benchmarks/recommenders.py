"""Recommender benchmark: SASRec with id / semantic / unified item vectors on the Amazon sets (full ranking,
unmasked and history-masked, and 1 + 99 sampled negatives), and DTN vs MMoE vs shared-bottom AUC per task on
ml-100k (mean +- std over seeds).

Writes benchmarks/results/recommenders.json (flat records, machine + date) and recommenders.md. Sets its
datasets up itself (benchmarks/prepare.py: fetch, validate, embed, quantize with params.yaml, reusing what is up
to date).

    python benchmarks/recommenders.py [--datasets amazon-scientific amazon-office] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402
from semid.tasks import layout  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.fsutil import git_sha  # noqa: E402
from semid.tasks.rank import rank  # noqa: E402
from semid.tasks.recommend import recommend  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
ANCHORS = {  # published Beauty full-ranking Recall@10 / NDCG@10 (papers.md section 1)
    "SASRec (TIGER paper)": (0.0605, 0.0318), "tuned SASRec": (0.0740, 0.0423), "TIGER": (0.0648, 0.0384),
    "LC-Rec": (0.0791, 0.0438),
}
KEYS = ("recall@1", "recall@5", "recall@10", "recall@20", "ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")


def sasrec_records(name: str, reprs: list[str], seed: int, sets: list[str]) -> list[dict]:
    rows = []
    for item_repr in reprs:
        cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml",
                          [f"recommend.item_repr={item_repr}", f"recommend.seed={seed}", *sets])
        out = recommend(name, cfg, out=Path(tempfile.mkdtemp()) / "rec",
                        on_epoch=lambda r: print(f"    epoch {r['epoch']}: {r}", flush=True))
        m = out["metrics"]
        for proto in ("full", "full_masked", "sampled99"):
            if f"test_{proto}_mrr" not in m:
                continue
            rows.append({"dataset": name, "model": "sasrec", "item_repr": item_repr,
                         "protocol": "full" if proto.startswith("full") else proto,
                         "masked": proto == "full_masked" if proto.startswith("full") else None, "seed": seed,
                         **{k: m[f"test_{proto}_{k}"] for k in KEYS},
                         "valid_ndcg@10": m.get(f"valid_{proto}_ndcg@10"),
                         "seconds_per_epoch": m["seconds_per_epoch"], "epochs": m["epochs"],
                         "best_epoch": m["best_epoch"], "params": out["params"], "loss": cfg.recommend.loss,
                         "codebook_sha256": codebook_sha(cfg, name) if item_repr != "id" else None,
                         "git": git_sha(12)})
        print(f"  {name} sasrec {item_repr}: full-masked R@10 {m['test_full_masked_recall@10']:.4f} "
              f"N@10 {m['test_full_masked_ndcg@10']:.4f}; unmasked N@10 {m['test_full_ndcg@10']:.4f}; "
              f"{m['seconds_per_epoch']:.1f} s/epoch, {m['epochs']} epochs", flush=True)
    return rows


def codebook_sha(cfg, name: str) -> str:
    """The first 12 hex digits of the sha256 of the semantic IDs (codes.npy) a record was trained on."""
    return hashlib.sha256((layout.semantic_dir(cfg, name) / "codes.npy").read_bytes()).hexdigest()[:12]


def start_recbole(python: str, name: str, epochs: int, out: Path) -> subprocess.Popen:
    """RecBole's SASRec on the same processed split, in its own venv, as a parallel 1-thread process."""
    processed = Path(__file__).resolve().parents[1] / "data" / "processed" / name
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen([python, str(Path(__file__).with_name("recbole_sasrec.py")), str(processed), str(out),
                             "--epochs", str(epochs), "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)


def recbole_record(name: str, out: Path, ours: list[dict]) -> dict:
    res = json.loads(out.read_text())
    t = res["test"]
    mine = next(r for r in ours if r["dataset"] == name and r["item_repr"] == "id" and r["protocol"] == "full"
                and not r["masked"])
    return {"dataset": name, "model": "recbole-sasrec", "item_repr": "id", "protocol": "full", "masked": False,
            "seed": 0, **{k: t.get(k) for k in KEYS}, "seconds_per_epoch": res["seconds_per_epoch"],
            "epochs": res["epochs"], "epoch_cap": res["epoch_cap"], "best_epoch": None, "params": None,
            "loss": "ce", "seconds_per_epoch_ratio_ours_over_recbole": mine["seconds_per_epoch"]
            / res["seconds_per_epoch"], "train_samples": res["train_samples"]}


def ranker_records(seeds: list[int], models: list[str], sets: list[str], variant: str | None = None) -> list[dict]:
    """One AUC record per model and seed; `variant` labels a non-default setting (e.g. a parameter-matched MMoE)
    so its records sit beside, not over, the default ones."""
    rows = []
    prepare_dataset("ml-100k", "quantize", sets)  # the rankers read the item's semantic-ID codes
    for model in models:
        for seed in seeds:
            cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml",
                              [f"ranker.model={model}", f"ranker.seed={seed}", *sets])
            out = rank("ml-100k", cfg)
            m = out["metrics"]
            rows.append({"dataset": "ml-100k", "model": model, "variant": variant, "item_repr": None,
                         "protocol": "auc", "seed": seed,
                         **{k: v for k, v in m.items() if k.startswith("test_auc_")},
                         "auc_interact": m["test_auc_interact"], "auc_like": m["test_auc_like"],
                         "seconds_per_epoch": m["seconds_per_epoch"], "epochs": m["epochs"],
                         "params": out["params"]})
            print(f"  ml-100k {model} {variant or ''} seed {seed}: AUC interact {m['test_auc_interact']:.4f} like "
                  f"{m['test_auc_like']:.4f} ({m['epochs']} epochs, {m['seconds_per_epoch']:.1f} s/epoch)",
                  flush=True)
    return rows


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def stamp(records: list[dict]) -> list[dict]:
    """Records just measured keep where, when, how (command) and at how many torch threads; returns them."""
    meta = machine()
    for r in records:
        r.update({"machine": machine_label(meta), "date": meta["date"],
                  "command": shlex.join(["python", "benchmarks/recommenders.py", *sys.argv[1:]]),
                  "torch_threads": meta["torch_threads"]})
    return records


def provenance(records: list[dict], python: str) -> list[str]:
    """Header lines: the machines, the measurement dates and the commands behind the records."""
    def distinct(key: str) -> list:
        return list(dict.fromkeys(r[key] for r in records if r.get(key) is not None))

    dates = sorted({r["date"][:10] for r in records if r.get("date")})
    threads = distinct("torch_threads")
    lines = [f"Machine: {'; '.join(distinct('machine'))}, Python {python}. "
             f"Measured on {', '.join(dates)} (the `date` column)"
             + (f", torch threads per model: {', '.join(map(str, threads))}." if threads else "."),
             "Commands (each record keeps its own; records without one predate the field, see the findings):"]
    lines += [f"- `{c}`" for c in distinct("command")] or ["- none recorded"]
    return lines


def seed_summary(rows: list[dict]) -> list[str]:
    """Mean +- std over seeds of Recall@10 / NDCG@10 per dataset, representation and protocol, and the
    unified - ID difference of the mean NDCG@10 (full ranking)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["item_repr"], r["protocol"], r.get("masked")), []).append(r)
    out = ["", "### Over seeds (mean +- std)", "",
           "| dataset | item repr | protocol | seeds | R@10 | N@10 |", "|---|---|---|---|---|---|"]
    for (name, item_repr, proto, masked), rs in groups.items():
        label = proto + (" (masked)" if masked else " (unmasked)" if proto == "full" else "")
        r10, n10 = np.array([r["recall@10"] for r in rs]), np.array([r["ndcg@10"] for r in rs])
        out.append(f"| {name} | {item_repr} | {label} | {len(rs)} | {r10.mean():.4f} +- {r10.std():.4f} | "
                   f"{n10.mean():.4f} +- {n10.std():.4f} |")
    out += ["", "Unified vs ID-only, mean NDCG@10 under full ranking (unified - ID, relative):", ""]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for masked in (True, False):
            mean = {rep: np.mean([r["ndcg@10"] for r in groups.get((name, rep, "full", masked), [])] or [np.nan])
                    for rep in ("id", "unified")}
            if not np.isnan(mean["id"]) and not np.isnan(mean["unified"]):
                diff = mean["unified"] - mean["id"]
                out.append(f"- {name}, {'masked' if masked else 'unmasked'}: {mean['unified']:.4f} vs "
                           f"{mean['id']:.4f} ({diff:+.4f}, {diff / mean['id']:+.1%}): unified "
                           f"{'>=' if diff >= 0 else '<'} ID")
    return out


def write(records: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "recommenders.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = ["# Recommender benchmark", "", *provenance(records, machine()["python"]), "",
             "## SASRec, leave-one-out test split", "",
             "Full ranking over the whole catalogue, unmasked and with the user's history masked; sampled = target "
             "+ 99 uniform negatives the user never interacted with (fixed seed). Recall@k = HR@k (one target).", "",
             "| dataset | item repr | protocol | seed | R@5 | R@10 | R@20 | N@5 | N@10 | N@20 | MRR | s/epoch | epochs "
             "(best) | params | date | codebook / git |", "|---" * 16 + "|"]
    for r in records:
        if r["model"] not in ("sasrec", "recbole-sasrec"):
            continue
        proto = r["protocol"] + (" (masked)" if r.get("masked") else " (unmasked)" if r["protocol"] == "full" else "")
        label = r["item_repr"] if r["model"] == "sasrec" else "id (**RecBole 1.2.1**)"
        cells = " | ".join(fmt(r.get(k)) for k in ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10",
                                                     "ndcg@20", "mrr"))
        lines.append(f"| {r['dataset']} | {label} | {proto} | {r['seed']} | {cells} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['epochs']} ({r['best_epoch'] if r['best_epoch'] is not None else '-'}) | "
                     f"{r['params'] or 0:,} | {r.get('date', '')[:10]} | {r.get('codebook_sha256') or '-'} / "
                     f"{r.get('git') or '-'} |")
    for r in records:
        if r["model"] == "recbole-sasrec":
            lines.append(f"\nRecBole reference on {r['dataset']}: our SASRec (id) seconds per epoch / RecBole's = "
                         f"**{r['seconds_per_epoch_ratio_ours_over_recbole']:.3f}** (both 1 thread, run side by side; "
                         f"RecBole trains on {r['train_samples']:,} prefix-augmented samples per epoch, we on one "
                         f"sequence per user with a loss at every position; RecBole epochs {r['epochs']} of cap "
                         f"{r['epoch_cap']}).")
    lines += seed_summary([r for r in records if r["model"] == "sasrec"])
    lines += ["", "Published Beauty full-ranking anchors (Recall@10 / NDCG@10): "
              + "; ".join(f"{k} {a:.4f} / {b:.4f}" for k, (a, b) in ANCHORS.items()) + ".", ""]
    rankers = [r for r in records if r["protocol"] == "auc"]
    if rankers:
        lines += ["## Multi-task rankers on ml-100k (test AUC, mean +- std over seeds)", "",
                  "| model | AUC interact | AUC like | seeds | s/epoch | epochs | params | date |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, variant in dict.fromkeys((r["model"], r.get("variant")) for r in rankers):
            rs = [r for r in rankers if (r["model"], r.get("variant")) == (model, variant)]
            a, b = np.array([r["auc_interact"] for r in rs]), np.array([r["auc_like"] for r in rs])
            epochs = "/".join(str(r["epochs"]) for r in rs)
            lines.append(f"| {model}{f' ({variant})' if variant else ''} | {a.mean():.4f} +- {a.std():.4f} | "
                         f"{b.mean():.4f} +- {b.std():.4f} | {len(rs)} | "
                         f"{np.mean([r['seconds_per_epoch'] for r in rs]):.1f} | {epochs} | {rs[0]['params']:,} | "
                         f"{rs[0].get('date', '')[:10]} |")
    write_report("recommenders", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="*", default=["amazon-scientific", "amazon-office"])
    ap.add_argument("--reprs", nargs="+", default=["id", "semantic", "unified"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="ranker seeds")
    ap.add_argument("--rankers", nargs="*", default=["dtn", "mmoe", "shared-bottom"])
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="config overrides, e.g. recommend.epochs=100")
    ap.add_argument("--recbole-python", default=None, help="python of a venv with recbole==1.2.1 (its own deps)")
    ap.add_argument("--recbole-datasets", nargs="*", default=["amazon-scientific"])
    ap.add_argument("--recbole-epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for our models (RecBole gets 1)")
    ap.add_argument("--merge", action="store_true", help="keep the results file's other records")
    ap.add_argument("--sasrec-seeds", nargs="+", type=int, default=[0], help="SASRec seeds")
    ap.add_argument("--part", type=Path, default=None,
                    help="write only this invocation's records to PART (a JSON list) and leave the results alone")
    ap.add_argument("--combine", nargs="+", type=Path, default=None,
                    help="merge PART files into the results (same dataset/model/variant/repr/seed/protocol replaced)")
    ap.add_argument("--variant", default=None,
                    help="label for the rankers' non-default --set values, e.g. 'matched params: 8 experts x 76'")
    ap.add_argument("--render", action="store_true", help="only rewrite recommenders.md from the JSON")
    args = ap.parse_args()
    if args.combine:
        write(combine(json.loads((OUT / "recommenders.json").read_text()), args.combine))
        return
    if args.render:
        write(json.loads((OUT / "recommenders.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    records: list[dict] = []
    if args.merge and (OUT / "recommenders.json").exists():
        fresh = set(args.datasets) | ({"ml-100k"} if args.rankers else set())
        records = [r for r in json.loads((OUT / "recommenders.json").read_text()) if r["dataset"] not in fresh]
    for name in args.datasets:
        prepare_dataset(name, "validate" if set(args.reprs) == {"id"} else "quantize", args.sets)
        job = None
        if args.recbole_python and name in args.recbole_datasets:
            job = (start_recbole(args.recbole_python, name, args.recbole_epochs, OUT / f"recbole-{name}.json"),
                   OUT / f"recbole-{name}.json")
        for seed in args.sasrec_seeds:
            records += stamp(sasrec_records(name, args.reprs, seed, args.sets))
        if job is not None:
            print(f"  waiting for RecBole on {name} ...", flush=True)
            if job[0].wait() == 0:
                records += stamp([recbole_record(name, job[1], records)])
                print("  ", records[-1], flush=True)
            else:
                print(f"  RecBole failed on {name}: see {job[1].with_suffix('.log')}", flush=True)
        save(records, args)
    if args.rankers:
        records += stamp(ranker_records(args.seeds, args.rankers, args.sets, args.variant))
        save(records, args)
    print(f"wrote {args.part or OUT / 'recommenders.json'}")


def save(records: list[dict], args) -> None:
    if args.part:
        args.part.write_text(json.dumps(records, indent=1) + "\n")
    else:
        write(records)


def record_key(r: dict) -> tuple:
    return r["dataset"], r["model"], r.get("variant"), r["item_repr"], r["seed"], r["protocol"], r.get("masked")


def combine(records: list[dict], parts: list[Path]) -> list[dict]:
    """The results' records with every record of the PART files replacing its namesake (or added)."""
    merged = {record_key(r): r for r in records}
    for part in parts:
        merged.update({record_key(r): r for r in json.loads(part.read_text())})
    return sorted(merged.values(), key=lambda r: (r["protocol"] == "auc", r["dataset"], r["model"],
                                                  str(r.get("variant")), str(r["item_repr"]), r["protocol"],
                                                  str(r.get("masked")), r["seed"]))


if __name__ == "__main__":
    main()
