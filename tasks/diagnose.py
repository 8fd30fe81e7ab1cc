"""Diagnose step: per-level codebook diagnostics (O_pi, K_eff, usage) + full-ID uniqueness, as JSON and PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.diagnostics import diagnose as diagnose_codes
from models.diagnostics import id_report
from models.quantizer import Quantizer
from tasks.config import Config
from tasks.embed import load_embeddings
from tasks.errors import PipelineError
from tasks.quantize import code_columns, semantic_dir


def report(quantizer: Quantizer, x: np.ndarray, final_ids: np.ndarray | None, rho: float, samples: int,
           seed: int) -> dict[str, Any]:
    """All diagnostics for a fit quantizer on embeddings x (no I/O)."""
    codes, residuals = quantizer.encode_with_residuals(x)
    out = diagnose_codes(codes, [cb.numpy() for cb in quantizer.codebooks], quantizer.distances,
                         [r.numpy() for r in residuals], rho, samples, seed)
    out["ids"]["pre_resolution"] = True
    out["recon_mse"] = float(np.mean((quantizer.decode(codes) - x) ** 2))
    out["final_ids"] = id_report(final_ids) if final_ids is not None else None
    out["method"] = quantizer.method
    out["distances"] = quantizer.distances
    return out


def flat_metrics(diag: dict[str, Any]) -> dict[str, float]:
    """One flat dict (for `dvc metrics show` and MLflow): every per-level diagnostic + ID uniqueness."""
    out: dict[str, float] = {}
    for lv in diag["levels"]:
        for key in ("active_share", "perplexity", "gini", "inverse_simpson", "o_pi", "k_eff", "k_eff_gaussian",
                    "sigma", "recon_mse"):
            if lv.get(key) is not None:
                out[f"l{lv['level']}_{key}"] = float(lv[key])
        out[f"l{lv['level']}_k_eff_ratio"] = float(lv["k_eff"] / lv["k"])
    out["duplicate_rate"] = float(diag["ids"]["duplicate_rate"])
    out["unique_coverage"] = float(diag["ids"]["unique_coverage"])
    out["max_items_per_id"] = float(diag["ids"]["max_items_per_id"])
    out["recon_mse"] = float(diag["recon_mse"])
    if diag.get("final_ids"):
        out["final_duplicate_rate"] = float(diag["final_ids"]["duplicate_rate"])
    return out


def plot(diag: dict[str, Any], codes: np.ndarray, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = diag["levels"]
    paths = []
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3), squeeze=False)
    for ax, lv in zip(axes[0], levels, strict=True):
        counts = np.sort(np.bincount(codes[:, lv["level"]], minlength=lv["k"]))[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0)
        ax.set_title(f"level {lv['level']} ({lv['distance']}): {lv['active']}/{lv['k']} active")
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("items")
    fig.tight_layout()
    paths.append(folder / "code_usage.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    xs = np.arange(len(levels))
    ax.bar(xs - 0.2, [lv["k_eff"] / lv["k"] for lv in levels], 0.4, label="K_eff/K (Monte-Carlo)")
    ax.bar(xs + 0.2, [lv["k_eff_gaussian"] / lv["k"] for lv in levels], 0.4, label="K_eff/K (Gaussian)")
    ax.set_xticks(xs, [f"level {i}" for i in xs])
    ax.set_ylim(0, 1)
    ax.set_title(f"effective capacity (rho={levels[0]['rho']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(folder / "k_eff.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def diagnose(name: str, cfg: Config) -> dict[str, Any]:
    import pandas as pd

    folder = semantic_dir(cfg, name)
    if not (folder / "quantizer" / "quantizer.json").exists():
        raise PipelineError(f"No quantizer for '{name}' in {folder}.", f"run `semid quantize {name}` first.")
    quantizer = Quantizer.load(folder / "quantizer")
    x = load_embeddings(cfg, name)
    ids = pd.read_parquet(folder / "ids.parquet")
    final = ids[code_columns(ids)].to_numpy()
    diag = report(quantizer, x, final, cfg.diagnose.rho, cfg.diagnose.mc_samples, cfg.diagnose.seed)
    diag["dataset"] = name
    (folder / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    (folder / "metrics.json").write_text(json.dumps(flat_metrics(diag), indent=2) + "\n")
    plot(diag, np.load(folder / "codes.npy"), folder)
    return diag
