"""The quantizer interface shared by RQ-KMeans, RQ-VAE and DRQ: fit/encode/decode/save/load + input checks."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semid.models.determinism import deterministic
from semid.models.kmeans import assign, faiss_kmeans, kmeans
from semid.models.params import QuantizerParams

IDENTITY = ("method", "levels", "codebook_size", "distances", "seed")  # quantizer.json's top-level fields


def build_quantizer(params: QuantizerParams) -> Quantizer:
    """A new (unfit) quantizer of the kind `params.method` names."""
    from semid.models.registry import get_model

    return get_model("quantizer", params.method)(params)


class QuantizerInputError(ValueError):
    """Bad input to a quantizer (wrong dim, NaN/inf, too few items); the message says what and how to fix."""


def check_input(x: np.ndarray | torch.Tensor, dim: int | None, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        x = x if x.flags.writeable else x.copy()  # a read-only memory map: torch wants its own copy
    t = torch.as_tensor(x).float()
    if t.ndim != 2:
        raise QuantizerInputError(f"expected a 2-d array [items, dim], got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise QuantizerInputError(
            f"input has dim {t.shape[1]} but the quantizer was fit on dim {dim}: use the same encoder as at fit time"
        )
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise QuantizerInputError(f"{int(bad.sum())} input rows contain NaN/inf (e.g. rows {rows}); fix the embeddings")
    if t.shape[0] < min_rows:
        raise QuantizerInputError(
            f"{t.shape[0]} items but the codebook has {min_rows} codes per level: fit needs at least as many "
            "items as codes; lower quantizer.codebook_size"
        )
    return t


def residual_quantize(
    z: torch.Tensor, codebooks: list[torch.Tensor], distances: list[str]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy residual assignment. Returns codes [N, L] and the residual entering each level."""
    residual = z
    codes, residuals = [], []
    for cb, dist in zip(codebooks, distances, strict=True):
        residuals.append(residual)
        idx, _ = assign(residual, cb, dist)
        codes.append(idx)
        residual = residual - cb[idx]
    return torch.stack(codes, dim=1), residuals


def residual_kmeans(
    z: torch.Tensor, levels: int, k: int, distances: list[str], iters: int, seed: int, impl: str = "faiss"
) -> list[torch.Tensor]:
    """Fit one k-means codebook per level on the residuals of the previous levels (k-means by faiss, or by the
    hand-written torch reference)."""
    fit = faiss_kmeans if impl == "faiss" else kmeans
    codebooks = []
    residual = z
    for level in range(levels):
        centers, idx = fit(residual, k, distances[level], iters=iters, seed=seed + level)
        codebooks.append(centers)
        residual = residual - centers[idx]
    return codebooks


class Quantizer(ABC):
    """Items' embeddings in -> integer codes [N, L]; codes -> reconstructed embeddings."""

    method: str = ""

    def __init__(self, params: QuantizerParams):
        self.params = params
        self.levels = params.levels
        self.codebook_size = params.codebook_size
        self.distances = list(params.distances)
        self.seed = params.seed
        self.input_dim: int | None = None
        self.codebooks: list[torch.Tensor] = []
        self.history: list[dict[str, float]] = []

    # --- the interface --------------------------------------------------------------------
    def fit(self, x: np.ndarray | torch.Tensor) -> Quantizer:
        t = check_input(x, None, min_rows=self.codebook_size)
        self.input_dim = t.shape[1]
        torch.manual_seed(self.seed)
        with deterministic():  # bit-exact under a seed, in any process
            self._fit(t)
        return self

    def encode(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        codes, _ = self.encode_with_residuals(x)
        return codes

    def encode_with_residuals(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, list[torch.Tensor]]:
        self._require_fit()
        t = check_input(x, self.input_dim)
        with torch.no_grad():
            codes, residuals = residual_quantize(self.to_latent(t), self.codebooks, self.distances)
        return codes.numpy().astype(np.int64), residuals

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        self._require_fit()
        # a copy: codes may be a read-only memmap (diagnose), which torch warns about and must not write to
        c = codes.long() if isinstance(codes, torch.Tensor) else torch.from_numpy(np.array(codes, dtype=np.int64))
        if c.ndim != 2 or c.shape[1] > self.levels or int(c.max()) >= self.codebook_size or int(c.min()) < 0:
            raise QuantizerInputError(f"codes must be [N, <= {self.levels}] in [0, {self.codebook_size})")
        with torch.no_grad():
            return self.from_latent(self._codeword_sum(c)).numpy()

    def latent(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The space the codebooks live in (identity for RQ-KMeans)."""
        self._require_fit()
        with torch.no_grad():
            return self.to_latent(check_input(x, self.input_dim))

    def codeword_vectors(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen codewords per item (the 'semantic' item vector of the unified paper)."""
        return self._codeword_sum(torch.as_tensor(codes, dtype=torch.long)).numpy()

    def _codeword_sum(self, c: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sum(self.codebooks[level][c[:, level]] for level in range(c.shape[1]))

    # --- persistence ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """quantizer.json: the identity fields, the input dim and the remaining typed parameters."""
        return {
            "method": self.method,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "distances": self.distances,
            "seed": self.seed,
            "input_dim": self.input_dim,
            "params": self.params.model_dump(mode="json", exclude=set(IDENTITY)),
        }

    def state(self) -> dict[str, torch.Tensor]:
        return {f"codebook.{i}": cb.contiguous() for i, cb in enumerate(self.codebooks)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.codebooks = [tensors[f"codebook.{i}"] for i in range(self.levels)]

    def save(self, folder: str | Path) -> Path:
        self._require_fit()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.state(), str(folder / "quantizer.safetensors"))
        (folder / "quantizer.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        return folder

    @staticmethod
    def load(folder: str | Path) -> Quantizer:
        folder = Path(folder)
        if not (folder / "quantizer.json").exists():
            raise FileNotFoundError(f"no quantizer.json in {folder}")
        conf = json.loads((folder / "quantizer.json").read_text())
        q = build_quantizer(QuantizerParams(**{k: conf[k] for k in IDENTITY}, **conf["params"]))
        q.input_dim = conf["input_dim"]
        q._build(q.input_dim)
        q.load_state(load_file(str(folder / "quantizer.safetensors")))
        return q

    # --- for subclasses -------------------------------------------------------------------
    @abstractmethod
    def _fit(self, x: torch.Tensor) -> None: ...

    def _build(self, input_dim: int) -> None:
        """Create the networks for an input dim (before load_state); RQ-KMeans has none."""
        return None

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def _require_fit(self) -> None:
        if not self.codebooks:
            raise QuantizerInputError("the quantizer is not fit yet: call fit(X) or load(folder) first")
