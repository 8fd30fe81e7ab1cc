"""Diagnose step: the codebook diagnostics report (models.diagnostics) of the fitted quantizer on the item
embeddings, written as diagnostics.json, a flat metrics.json (every number, for MLflow), summary.json (the
headline numbers, for `dvc metrics show`) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from semid.models.diagnostics import flat_metrics, report
from semid.models.quantizer import Quantizer
from semid.models.semantic_ids import code_columns
from semid.tasks import layout
from semid.tasks.config import Config
from semid.tasks.errors import PipelineError


def headline(diag: dict[str, Any]) -> dict[str, float]:
    """K_eff per level (Monte-Carlo kernel) and the duplicate rate before collision resolution."""
    return {**{f"K_eff_l{lv['level']}": round(lv["k_eff"], 2) for lv in diag["levels"]},
            "dup_rate": round(diag["ids"]["duplicate_rate"], 5)}


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
    """Diagnose data/semantic/NAME's quantizer on NAME's embeddings; returns the report."""
    import pandas as pd

    folder = layout.semantic_dir(cfg, name)
    if not (folder / "quantizer" / "quantizer.json").exists():
        raise PipelineError(f"No quantizer for '{name}' in {folder}.", f"run `semid quantize {name}` first.")
    quantizer = Quantizer.load(folder / "quantizer")
    x = layout.load_embeddings(cfg, name, mmap=True)
    ids = pd.read_parquet(folder / "ids.parquet")
    codes = np.load(folder / "codes.npy", mmap_mode="r")
    if codes.shape[0] != x.shape[0]:
        raise PipelineError(f"{folder / 'codes.npy'} has {codes.shape[0]} items but the embeddings have {x.shape[0]}.",
                            f"run `semid quantize {name}` again.")
    diag = report(quantizer, x, ids[code_columns(ids)].to_numpy(), cfg.diagnose, codes=codes)
    diag["dataset"] = name
    (folder / "diagnostics.json").write_text(json.dumps(diag, indent=2) + "\n")
    (folder / "metrics.json").write_text(json.dumps(flat_metrics(diag), indent=2) + "\n")
    (folder / "summary.json").write_text(json.dumps(headline(diag), indent=2) + "\n")
    plot(diag, np.load(folder / "codes.npy"), folder)
    return diag
