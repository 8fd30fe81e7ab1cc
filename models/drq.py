"""DRQ: decoupled residual quantization. Stage 1 a continuous VAE trained alone (optionally with an
InfoNCE loss on items that co-occur in user sequences, DRQ-VAE+CL); stage 2 RQ-KMeans on the frozen
latent means."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from semid.models.quantizer import residual_kmeans
from semid.models.rqvae import RQVAE, mlp


class DRQ(RQVAE):
    method = "drq"

    def _build(self, input_dim: int) -> None:
        dims = self._dims(input_dim)
        self.encoder = mlp([*dims[:-1], 2 * dims[-1]])  # -> (mean, log-variance)
        self.decoder = mlp(dims[::-1])

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).chunk(2, dim=1)[0]

    def fit(self, x, pairs: np.ndarray | None = None):  # type: ignore[override]
        """pairs: optional [P, 2] item-index pairs that co-occur in behaviour (for the InfoNCE term)."""
        self._pairs = None if pairs is None or len(pairs) == 0 else torch.as_tensor(np.asarray(pairs)).long()
        return super().fit(x)

    def _fit(self, x: torch.Tensor) -> None:
        p = self.params
        epochs, bs, kl_w, cl_w = p.epochs, p.batch_size, p.kl_weight, p.contrastive_weight
        self._build(x.shape[1])
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=p.lr)
        n = x.shape[0]
        pairs = getattr(self, "_pairs", None)
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            totals = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "infonce": 0.0}
            for start in range(0, n, bs):
                xb = x[perm[start:start + bs]]
                mean, logvar = self.encoder(xb).chunk(2, dim=1)
                logvar = logvar.clamp(-10, 10)
                z = mean + torch.randn(mean.shape, generator=gen) * (0.5 * logvar).exp()
                rec = F.mse_loss(self.decoder(z), xb)
                kl = -0.5 * torch.mean(torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=1))
                loss = rec + kl_w * kl
                nce = torch.zeros(())
                if pairs is not None and cl_w > 0:
                    pb = pairs[torch.randint(len(pairs), (min(bs, len(pairs)),), generator=gen)]
                    a = F.normalize(self.to_latent(x[pb[:, 0]]), dim=1)
                    b = F.normalize(self.to_latent(x[pb[:, 1]]), dim=1)
                    logits = a @ b.T / 0.1
                    nce = F.cross_entropy(logits, torch.arange(len(pb)))
                    loss = loss + cl_w * nce
                opt.zero_grad()
                loss.backward()
                opt.step()
                w = len(xb) / n
                for key, val in (("loss", loss), ("recon", rec), ("kl", kl), ("infonce", nce)):
                    totals[key] += float(val.detach()) * w
            self.history.append({"epoch": epoch, **totals})
        with torch.no_grad():
            self.codebooks = residual_kmeans(self.to_latent(x), self.levels, self.codebook_size, self.distances,
                                             p.kmeans_iters, self.seed, p.kmeans)


def cooccurrence_pairs(sequences: list[list[int]], window: int, holdout: int = 2) -> np.ndarray:
    """Unique (a, b) item pairs, a != b, within `window` positions of each other in the *training prefix* of some
    sequence: all but its last `holdout` items, which leave-one-out keeps as validation and test targets."""
    out = set()
    for full in sequences:
        seq = full[: max(len(full) - holdout, 0)]
        for i, a in enumerate(seq):
            for b in seq[i + 1:i + 1 + window]:
                if a != b:
                    out.add((a, b))
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)
