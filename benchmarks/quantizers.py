"""Quantizer benchmark: every method x dataset with diagnostics, the RQ-VAE distance ablation, RQ-KMeans vs
faiss.ResidualQuantizer, and embedding throughput vs bare SentenceTransformer.encode (ratios, same run).

Writes benchmarks/results/quantizers.json (flat records) and quantizers.md. Sets its datasets up itself
(benchmarks/prepare.py: fetch + validate, reusing what is up to date); embeddings are computed (and cached).

    python benchmarks/quantizers.py [--datasets ml-100k amazon-scientific ...] [--epochs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hostinfo import cpu_model  # noqa: E402
from benchmarks.prepare import prepare_dataset  # noqa: E402
from semid.models.diagnostics import report  # noqa: E402
from semid.models.semantic_ids import fit_and_encode  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.embed import encode_texts, load_encoder  # noqa: E402
from semid.tasks.layout import load_processed  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
COS3, EUC3, HYB = ["cosine"] * 3, ["euclidean"] * 3, ["cosine", "cosine", "euclidean"]


def machine_label(meta: dict) -> str:
    """The one-line machine description that records and report headers carry, from a `machine()` dict."""
    return f"{meta['platform']}, {meta['cpus']} CPUs, torch {meta['torch']}"


def machine() -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def write_report(name: str, lines: list[str]) -> None:
    """Write benchmarks/results/NAME.md from `lines` plus the hand-written NAME.findings.md, kept across re-runs."""
    findings = OUT / f"{name}.findings.md"
    if findings.exists():
        lines = [*lines, "", findings.read_text().rstrip()]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


def records_for(dataset: str, method: str, distances: list[str], out: dict, diag: dict, beta: float) -> list[dict]:
    rows = []
    for lv in diag["levels"]:
        rows.append({"dataset": dataset, "method": method, "distances": "/".join(distances), "beta": beta,
                     "level": lv["level"],
                     "active_share": lv["active_share"], "perplexity": lv["perplexity"], "gini": lv["gini"],
                     "k_eff": lv["k_eff"], "k_eff_gaussian": lv["k_eff_gaussian"], "k": lv["k"], "o_pi": lv["o_pi"],
                     "sigma": lv["sigma"], "rho": lv["rho"], "recon_mse": lv.get("recon_mse"),
                     "duplicate_rate": None, "unique_coverage": None, "fit_seconds": None})
    rows.append({"dataset": dataset, "method": method, "distances": "/".join(distances), "beta": beta, "level": "all",
                 "active_share": None, "perplexity": None, "gini": None, "k_eff": None, "k_eff_gaussian": None,
                 "k": None, "o_pi": None, "sigma": None, "rho": None, "recon_mse": diag["recon_mse"],
                 "duplicate_rate": diag["ids"]["duplicate_rate"], "unique_coverage": diag["ids"]["unique_coverage"],
                 "final_duplicate_rate": diag["final_ids"]["duplicate_rate"], "fit_seconds": out["fit_seconds"]})
    return rows


def embed_dataset(cfg, name: str) -> np.ndarray:
    texts = load_processed(cfg, name)["items"].sort_values("item_id")["text"].tolist()
    vectors, _, _ = encode_texts(texts, cfg, progress=False)
    return vectors


def faiss_comparison(name: str, x: np.ndarray, levels: int, k: int) -> dict:
    import faiss

    from semid.models.params import QuantizerParams
    from semid.models.rqkmeans import RQKMeans

    start = time.perf_counter()
    ours = RQKMeans(QuantizerParams(method="rqkmeans", levels=levels, codebook_size=k, distances=["euclidean"] * levels,
                                    seed=0, kmeans_iters=25)).fit(x)
    ours_s = time.perf_counter() - start
    ours_mse = float(np.mean((ours.decode(ours.encode(x)) - x) ** 2))
    rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(k)))
    rq.max_beam_size = 1  # greedy encoding, like ours
    rq.train_type = faiss.ResidualQuantizer.Train_default
    start = time.perf_counter()
    rq.train(np.ascontiguousarray(x))
    faiss_s = time.perf_counter() - start
    faiss_mse = float(np.mean((rq.decode(rq.compute_codes(x)) - x) ** 2))
    return {"dataset": name, "comparison": "rqkmeans_vs_faiss_rq", "levels": levels, "k": k,
            "ours_seconds": ours_s, "faiss_seconds": faiss_s, "ratio": ours_s / faiss_s,
            "fit_time_ratio": ours_s / faiss_s, "ours_mse": ours_mse, "faiss_mse": faiss_mse,
            "mse_ratio": ours_mse / faiss_mse}


def throughput_comparison(name: str, texts: list[str], batch: int, reps: int = 5) -> dict:
    """Our cached encode path (cold cache) vs bare SentenceTransformer.encode on the same texts.

    Each repetition times the two back to back; the ratio is the median of the per-repetition ratios, which is
    robust to other load on the machine drifting during the measurement."""
    encoder = load_encoder("all-MiniLM-L6-v2")
    encoder.encode(texts[:32], batch_size=batch)  # warm-up
    bare, ours = [], []
    for _ in range(reps):
        start = time.perf_counter()
        encoder.encode(texts, batch_size=batch, show_progress_bar=False, convert_to_numpy=True)
        bare.append(len(texts) / (time.perf_counter() - start))
        tmp = tempfile.mkdtemp()
        cfg = load_config(None, [f"embed.cache_dir={tmp}", f"embed.batch_size={batch}"])
        start = time.perf_counter()
        encode_texts(texts, cfg, progress=False, encoder=encoder)
        ours.append(len(texts) / (time.perf_counter() - start))
        shutil.rmtree(tmp)
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return {"dataset": name, "comparison": "embed_throughput_vs_bare_encode", "texts": len(texts), "reps": reps,
            "ours_texts_per_s": float(np.median(ours)), "bare_texts_per_s": float(np.median(bare)),
            "ratio": float(np.median(ratios)), "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "amazon-scientific", "amazon-office",
                                                      "amazon-beauty"])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--throughput-texts", type=int, default=512)
    ap.add_argument("--merge", action="store_true",
                    help="keep the results file's records of other datasets (re-run only --datasets)")
    ap.add_argument("--only-throughput", action="store_true", help="only re-measure the embedding throughput")
    ap.add_argument("--beta-sweep", nargs="*", default=["amazon-scientific"],
                    help="datasets on which RQ-VAE [cos,cos,euc] also runs with commitment beta 0.25/0.5/2.0")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    records: list[dict] = []
    if args.merge or args.only_throughput:
        old = json.loads((OUT / "quantizers.json").read_text())
        drop = (lambda r: r.get("comparison") == "embed_throughput_vs_bare_encode" and r["dataset"] in args.datasets) \
            if args.only_throughput else (lambda r: r["dataset"] in args.datasets)
        records = [r for r in old if not drop(r)]
    if args.only_throughput:
        for name in args.datasets:
            prepare_dataset(name, "validate")
            texts = load_processed(base, name)["items"].sort_values("item_id")["text"].tolist()
            records.append(throughput_comparison(name, texts[: args.throughput_texts], base.embed.batch_size))
            print("  ", records[-1])
        write(records, args)
        return
    runs = [("rqvae", HYB), ("rqvae", COS3), ("rqvae", EUC3), ("rqkmeans", HYB), ("drq", HYB)]
    for name in args.datasets:
        prepare_dataset(name, "validate")
        x = embed_dataset(base, name)
        print(f"{name}: {x.shape}")
        sweep = [("rqvae", HYB, b) for b in (0.25, 0.5, 2.0) if b != base.quantizer.beta] \
            if name in args.beta_sweep else []
        for method, distances, beta in [(m, d, base.quantizer.beta) for m, d in runs] + sweep:
            qcfg = base.quantizer.model_copy(update={"method": method, "distances": distances, "epochs": args.epochs,
                                                     "beta": beta})
            out = fit_and_encode(x, qcfg)
            diag = report(out["quantizer"], x, out["ids"], base.diagnose.model_copy(update={"seed": 0}))
            records += records_for(name, method, distances, out, diag, beta if method == "rqvae" else None)
            lv = diag["levels"]
            print(f"  {method:8s} {'/'.join(d[:3] for d in distances)} beta {beta}: active "
                  f"{[round(v['active_share'], 3) for v in lv]} K_eff {[round(v['k_eff'], 1) for v in lv]} "
                  f"dup {diag['ids']['duplicate_rate']:.4f} fit {out['fit_seconds']:.1f}s")
        records.append(faiss_comparison(name, x, base.quantizer.levels, base.quantizer.codebook_size))
        print("  ", records[-1])
        texts = load_processed(base, name)["items"].sort_values("item_id")["text"].tolist()
        records.append(throughput_comparison(name, texts[: args.throughput_texts], base.embed.batch_size))
        print("  ", records[-1])
        write(records, args)  # after every dataset, so a long run that is stopped keeps what it measured
    print(f"wrote {OUT / 'quantizers.json'} and quantizers.md")


def write(records: list[dict], args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    meta = machine()
    for r in records:  # a flat list of records, each saying where and when it was measured (kept when merged)
        r.setdefault("machine", machine_label(meta))
        r.setdefault("date", meta["date"])
    (OUT / "quantizers.json").write_text(json.dumps(records, indent=1) + "\n")
    (OUT / "quantizers.md").write_text(markdown(records, meta, args))


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def markdown(records: list[dict], meta: dict, args) -> str:
    lines = ["# Quantizer benchmark", "",
             f"Machine: {machine_label(meta)} "
             f"({meta['torch_threads']} threads), Python {meta['python']}. Date: {meta['date']}.",
             f"Command: `python benchmarks/quantizers.py --datasets {' '.join(args.datasets)} --epochs {args.epochs}`"
             f" (beta sweep on {', '.join(args.beta_sweep) or 'none'})",
             "3 levels x 256 codes, codeword dim 64 (RQ-VAE/DRQ), encoder all-MiniLM-L6-v2 (384-d). K_eff uses the "
             "Monte-Carlo kernel with rho = 0.5 (sigma = rho x median nearest-codeword distance); the Gaussian "
             "kernel is shown beside. Duplicate rate / unique coverage are *before* collision resolution; final "
             "IDs after resolution are unique in every run (final dup column).", "",
             "| dataset | method | distances | beta | active L0/L1/L2 | K_eff L0/L1/L2 | K_eff gauss L0/L1/L2 | "
             "gini L0/L1/L2 | dup rate | unique cov. | final dup | recon MSE | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keyed: dict[tuple, list[dict]] = {}
    for r in records:
        if "method" in r:
            keyed.setdefault((r["dataset"], r["method"], r["distances"], r.get("beta")), []).append(r)
    for (ds, method, dist, beta), rows in keyed.items():
        lv = [r for r in rows if r["level"] != "all"]
        al = next(r for r in rows if r["level"] == "all")
        def per_level(key: str, spec: str, rows=lv) -> str:
            return "/".join(format(r[key], spec) for r in rows)

        lines.append(
            f"| {ds} | {method} | {dist} | {fmt(beta, 'g')} | {per_level('active_share', '.1%')} | "
            f"{per_level('k_eff', '.0f')} | "
            f"{per_level('k_eff_gaussian', '.1f')} | {per_level('gini', '.2f')} | {al['duplicate_rate']:.2%} | "
            f"{al['unique_coverage']:.2%} | {al['final_duplicate_rate']:.2%} | {fmt(al['recon_mse'], '.2e')} | "
            f"{al['fit_seconds']:.1f} |")
    lines += ["", "## Comparisons (same run)", "", "| dataset | comparison | ratio | detail |", "|---|---|---|---|"]
    for r in records:
        if r.get("comparison") == "rqkmeans_vs_faiss_rq":
            lines.append(f"| {r['dataset']} | RQ-KMeans vs faiss.ResidualQuantizer ({r['levels']}x{r['k']}, greedy) | "
                         f"MSE ratio {r['mse_ratio']:.3f}, fit-time ratio {r['fit_time_ratio']:.2f} | "
                         f"MSE ours {r['ours_mse']:.3e} / faiss {r['faiss_mse']:.3e}; "
                         f"{r['ours_seconds']:.1f} s / {r['faiss_seconds']:.1f} s |")
        elif r.get("comparison") == "embed_throughput_vs_bare_encode":
            lines.append(f"| {r['dataset']} | embed step vs bare SentenceTransformer.encode ({r['texts']} texts, "
                         f"cold cache, median of {r.get('reps', 2)} paired runs) | {r['ratio']:.3f} | "
                         f"{r['ours_texts_per_s']:.1f} vs {r['bare_texts_per_s']:.1f} texts/s; measured {r['date']} |")
    findings = OUT / "quantizers.findings.md"  # hand-written reading of the tables, kept across re-runs
    if findings.exists():
        lines += ["", findings.read_text().rstrip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
