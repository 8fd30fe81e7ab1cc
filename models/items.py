"""Item vectors for sequential recommenders: `id` (a learned ID embedding per item), `semantic` (the sum of the
item's codeword vectors, one learned table per level initialised from the codebook) or `unified` (concat of the
semantic vector and a small ID embedding, the unified semantic+ID paper's 64 + 8 = 72-d item vector). With a joint
RQ-VAE the semantic part comes from an RQ-VAE run inside the model on the item's text embedding (straight-through).
The same table embeds the input sequence and scores candidates. Item index 0 is padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semid.models.kmeans import assign

REPRS = ("id", "semantic", "unified")


class JointRQ(nn.Module):
    """RQ-VAE as a trainable module: encoder -> residual codebooks (straight-through) -> decoder."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, codebooks: list[torch.Tensor], distances: list[str],
                 text: torch.Tensor, beta: float = 0.25):
        super().__init__()
        self.encoder, self.decoder, self.distances, self.beta = encoder, decoder, list(distances), beta
        self.codebooks = nn.ParameterList([nn.Parameter(cb.clone()) for cb in codebooks])
        self.register_buffer("text", text.float())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (quantised item vectors with straight-through gradient, codes [N, L], aux loss)."""
        z = self.encoder(self.text)
        residual, zq, commit, codes = z, torch.zeros_like(z), z.new_zeros(()), []
        for cb, dist in zip(self.codebooks, self.distances, strict=True):
            idx, _ = assign(residual.detach(), cb.detach(), dist)
            q = cb[idx]
            commit = commit + F.mse_loss(q, residual.detach()) + self.beta * F.mse_loss(residual, q.detach())
            residual = residual - q.detach()
            zq = zq + q
            codes.append(idx)
        z_st = z + (zq - z).detach() + (zq - zq.detach())  # value zq; grads to encoder (STE) and codewords
        recon = F.mse_loss(self.decoder(z_st), self.text)
        return z_st, torch.stack(codes, 1), recon + commit


class ItemTable(nn.Module):
    """Builds the [N + 1, d] item table (row 0 = padding) for the chosen representation."""

    def __init__(self, n_items: int, repr: str, id_dim: int = 64, codes: torch.Tensor | None = None,
                 codebooks: list[torch.Tensor] | None = None, freeze_codebooks: bool = False,
                 joint: JointRQ | None = None, id_scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if repr not in REPRS:
            raise ValueError(f"item_repr must be one of {REPRS}, got {repr!r}")
        self.repr, self.n_items, self.joint, self.id_scale = repr, n_items, joint, id_scale
        self.drop = nn.Dropout(dropout)  # in training only, on the rows as input and as candidates (RecTools)
        self.ids = nn.Embedding(n_items, id_dim) if repr in ("id", "unified") else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)
        self.levels = nn.ModuleList()
        if repr in ("semantic", "unified") and joint is None:
            if codes is None or codebooks is None:
                raise ValueError(f"item_repr={repr!r} needs semantic codes and codebooks")
            if codes.shape != (n_items, len(codebooks)):
                raise ValueError(f"codes shape {tuple(codes.shape)} != ({n_items}, {len(codebooks)})")
            self.register_buffer("codes", codes.long())
            for cb in codebooks:
                emb = nn.Embedding.from_pretrained(cb.float().clone(), freeze=freeze_codebooks)
                self.levels.append(emb)
        sem = 0 if repr == "id" else (joint.codebooks[0].shape[1] if joint is not None else codebooks[0].shape[1])
        self.dim = sem + (id_dim if self.ids is not None else 0)

    def forward(self, chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
        """(table [N + 1, d], auxiliary loss from the joint RQ-VAE or 0). Without autograd (evaluation, serving)
        the table is filled `chunk` rows at a time, so memory is the table plus one chunk's temporaries instead of
        several whole-table ones (at 1M items and d = 392 each is 1.6 GB); the values are the same."""
        if self.joint is None:
            index = torch.arange(self.n_items + 1)
            if torch.is_grad_enabled():
                return self.rows(index), torch.zeros(())
            table = torch.empty(len(index), self.dim, dtype=next(self.parameters()).dtype)
            for part in index.split(chunk):
                table[part[0]:part[-1] + 1] = self.rows(part)
            return table, torch.zeros(())
        sem, _, aux = self.joint()
        table = torch.cat([sem, *([self.ids.weight * self.id_scale] if self.ids is not None else [])], dim=1)
        return torch.cat([table.new_zeros(1, table.shape[1]), self.drop(table)], dim=0), aux

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` (item indices, 0 = padding) of the table forward() builds, computed for those items only:
        what a sampled-softmax batch touches, instead of the whole [N + 1, d] table (at 1M items the table and its
        gradient are built and freed on every batch). Needs fixed codes: a joint RQ-VAE builds the whole table."""
        if self.joint is not None:
            raise ValueError("rows() needs fixed codes; with a joint RQ-VAE use forward() (the whole table)")
        item = (index - 1).clamp(min=0)
        parts = []
        if self.repr != "id":
            parts.append(sum(emb(self.codes[item, level]) for level, emb in enumerate(self.levels)))
        if self.ids is not None:
            parts.append(self.ids(item) * self.id_scale)
        return self.drop(torch.cat(parts, dim=1)) * (index > 0).unsqueeze(1)
