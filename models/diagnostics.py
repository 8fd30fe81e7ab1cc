"""Codebook diagnostics (pure numpy/torch): usage statistics, expected codeword overlap O_pi and
effective capacity K_eff = 1/O_pi per level, and full-ID uniqueness (see papers.md section 2).

O_pi = sum_j sum_k pi_j pi_k kappa(j, k), kappa symmetric with kappa(k, k) = 1:
- Monte-Carlo kernel: kappa(j, k) = (P(j->k) + P(k->j)) / 2, P(j->k) the probability that codeword j
  plus N(0, sigma^2 I) noise is assigned to codeword k;
- Gaussian-overlap kernel: kappa(j, k) = exp(-||c_j - c_k||^2 / (8 sigma^2)).
sigma = rho * median nearest-codeword distance of the level (rho -> 0 gives K_eff = 1/sum pi^2).
`report` is the whole diagnostics report of a fit quantizer; `flat_metrics` its flat form for DVC and MLflow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from semid.models.kmeans import assign, pairwise_sq_dist
from semid.models.params import DiagnoseParams
from semid.models.quantizer import Quantizer


def usage(codes_level: np.ndarray, k: int) -> np.ndarray:
    """pi: share of items on each of the k codes."""
    counts = np.bincount(np.asarray(codes_level, dtype=np.int64), minlength=k).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def entropy(pi: np.ndarray) -> float:
    p = pi[pi > 0]
    return float(-(p * np.log(p)).sum())


def perplexity(pi: np.ndarray) -> float:
    return float(np.exp(entropy(pi)))


def inverse_simpson(pi: np.ndarray) -> float:
    return float(1.0 / np.sum(pi**2))


def gini(values: np.ndarray) -> float:
    """Gini coefficient of usage over all codes (0 = perfectly even, -> 1 = all on one code)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * np.sum(ranks * x)) / (n * x.sum()) - (n + 1) / n)


def sigma_for(codebook: np.ndarray, active: np.ndarray, rho: float) -> float:
    """rho x the median distance from each active codeword to its nearest other active codeword."""
    c = torch.as_tensor(codebook[active], dtype=torch.float64)
    if len(c) < 2:
        return 0.0
    d = pairwise_sq_dist(c, c)
    d.fill_diagonal_(float("inf"))
    return float(rho * d.min(dim=1).values.sqrt().median())


def overlap_gaussian(pi: np.ndarray, codebook: np.ndarray, sigma: float) -> float:
    active = pi > 0
    p = pi[active]
    if sigma <= 0 or active.sum() < 2:
        return float(np.sum(p**2))
    c = torch.as_tensor(codebook[active], dtype=torch.float64)
    kappa = torch.exp(-pairwise_sq_dist(c, c) / (8 * sigma**2)).numpy()
    np.fill_diagonal(kappa, 1.0)
    return float(p @ kappa @ p)


def overlap_monte_carlo(
    pi: np.ndarray, codebook: np.ndarray, sigma: float, distance: str, samples: int = 64, seed: int = 0
) -> float:
    active = np.flatnonzero(pi > 0)
    p = pi[active]
    if sigma <= 0 or len(active) < 2:
        return float(np.sum(p**2))
    gen = torch.Generator().manual_seed(seed)
    full = torch.as_tensor(codebook, dtype=torch.float32)
    c = full[active]
    noise = torch.randn((len(active), samples, c.shape[1]), generator=gen) * sigma
    points = (c[:, None, :] + noise).reshape(-1, c.shape[1])
    idx, _ = assign(points, full, distance)  # assigned among *all* codewords of the level
    idx = idx.reshape(len(active), samples).numpy()
    pos = {int(code): i for i, code in enumerate(active)}
    prob = np.zeros((len(active), len(active)))
    for j in range(len(active)):
        targets, counts = np.unique(idx[j], return_counts=True)
        for t, cnt in zip(targets, counts, strict=True):
            if int(t) in pos:
                prob[j, pos[int(t)]] = cnt / samples
    kappa = 0.5 * (prob + prob.T)
    np.fill_diagonal(kappa, 1.0)
    return float(p @ kappa @ p)


def level_report(
    codes_level: np.ndarray,
    codebook: np.ndarray,
    distance: str,
    rho: float = 0.5,
    samples: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    k = codebook.shape[0]
    pi = usage(codes_level, k)
    active = pi > 0
    sigma = sigma_for(codebook, active, rho)
    o_mc = overlap_monte_carlo(pi, codebook, sigma, distance, samples, seed)
    o_g = overlap_gaussian(pi, codebook, sigma)
    return {
        "k": k,
        "distance": distance,
        "active": int(active.sum()),
        "active_share": float(active.mean()),
        "entropy": entropy(pi),
        "perplexity": perplexity(pi),
        "gini": gini(pi * len(codes_level)),
        "inverse_simpson": inverse_simpson(pi),
        "rho": rho,
        "sigma": sigma,
        "o_pi": o_mc,
        "k_eff": 1.0 / o_mc,
        "o_pi_gaussian": o_g,
        "k_eff_gaussian": 1.0 / o_g,
    }


def id_report(codes: np.ndarray) -> dict[str, Any]:
    """Full-ID uniqueness: unique coverage (items whose ID no other item has), duplicate rate, max per ID."""
    n = len(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_item = counts[inverse.ravel()]
    return {
        "items": n,
        "unique_ids": len(counts),
        "unique_coverage": float((per_item == 1).mean()) if n else 0.0,
        "duplicate_rate": 1.0 - len(counts) / n if n else 0.0,
        "max_items_per_id": int(counts.max()) if n else 0,
    }


def diagnose(
    codes: np.ndarray,
    codebooks: list[np.ndarray],
    distances: list[str],
    residuals: list[np.ndarray] | None = None,
    rho: float = 0.5,
    samples: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-level reports (+ residual MSE after each level when residuals are given) and the full-ID report."""
    levels = []
    for level, (cb, dist) in enumerate(zip(codebooks, distances, strict=True)):
        rep = {"level": level, **level_report(codes[:, level], cb, dist, rho, samples, seed + level)}
        if residuals is not None:
            after = residuals[level] - cb[codes[:, level]]
            rep["recon_mse"] = float(np.mean(after**2))
        levels.append(rep)
    return {"levels": levels, "ids": id_report(codes)}


def report(quantizer: Quantizer, x: np.ndarray, final_ids: np.ndarray | None, params: DiagnoseParams,
           codes: np.ndarray | None = None, chunk: int = 65_536) -> dict[str, Any]:
    """All diagnostics for a fit quantizer on embeddings x: per level, pre-resolution IDs, reconstruction MSE,
    and the final (collision-resolved) IDs when given.

    Streamed over `chunk` items at a time (x may be a memory map): the reconstruction errors and the catalogue
    mean come from per-chunk sums, so memory is one chunk's residuals, never 3 x N x d. With `codes` (the quantize
    step's pre-resolution codes) nothing is re-encoded: the latents are computed chunk by chunk and the stored codes
    subtracted from them."""
    n, dim = x.shape
    codebooks = [cb.numpy() for cb in quantizer.codebooks]
    level_sq = np.zeros(len(codebooks))
    recon_sq, total, total_sq, latent_dim = 0.0, np.zeros(dim), 0.0, 1
    parts = []
    for lo in range(0, n, chunk):
        xc = np.asarray(x[lo:lo + chunk], dtype=np.float32)
        cc = quantizer.encode(xc) if codes is None else np.asarray(codes[lo:lo + chunk])
        parts.append(cc)
        residual = quantizer.latent(xc).numpy().astype(np.float64)
        latent_dim = residual.shape[1]
        for level, cb in enumerate(codebooks):
            residual = residual - cb[cc[:, level]]
            level_sq[level] += float((residual**2).sum())
        recon_sq += float(((quantizer.decode(cc) - xc).astype(np.float64) ** 2).sum())
        total += xc.sum(axis=0, dtype=np.float64)
        total_sq += float((xc.astype(np.float64) ** 2).sum())
    codes = np.concatenate(parts) if parts else np.zeros((0, len(codebooks)), dtype=np.int64)
    out = diagnose(codes, codebooks, quantizer.distances, None, params.rho, params.mc_samples, params.seed)
    for level, rep in enumerate(out["levels"]):
        rep["recon_mse"] = level_sq[level] / (n * latent_dim)
    out["ids"]["pre_resolution"] = True
    out["recon_mse"] = recon_sq / (n * dim)
    out["recon_mse_baseline"] = (total_sq - float((total**2).sum()) / n) / (n * dim)  # predicting the mean
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
    out["recon_mse_baseline"] = float(diag["recon_mse_baseline"])
    out["recon_ratio"] = out["recon_mse"] / out["recon_mse_baseline"] if out["recon_mse_baseline"] > 0 else math.nan
    if diag.get("final_ids"):
        out["final_duplicate_rate"] = float(diag["final_ids"]["duplicate_rate"])
    return out
