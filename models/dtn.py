"""Multi-task rankers on field embeddings: DTN (task-specific feature interactions), MMoE and shared-bottom.

Input: `cat` [B, Fc] per-field category ids, `bag` [B, Fb, M] multi-valued fields (0 = empty slot),
`dense` [B, D] floats. Every field becomes one E-dim embedding; the modules read the [B, F, E] field matrix.

DTN (see papers.md section 3): per task and one shared branch a set of diversified interaction modules
(instance-guided mask block, gated cross network, MLP). Task i mixes (a) the other tasks' + shared modules
and (b) its own modules with two softmax gates; the concatenation feeds its tower (128 -> 64 -> 1). The
task-sensitive branch gives each downstream task the upstream task's own-module mix times the upstream
prediction with the gradient stopped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semid.models.params import RankerParams
from semid.models.registry import get_model


class FieldEmbedding(nn.Module):
    def __init__(self, cat_vocab: list[int], bag_vocab: list[int], n_dense: int, dim: int):
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(v, dim) for v in cat_vocab)
        self.bag = nn.ModuleList(nn.Embedding(v, dim, padding_idx=0) for v in bag_vocab)
        self.dense = nn.Parameter(torch.randn(n_dense, dim) * 0.01) if n_dense else None
        for emb in [*self.cat, *self.bag]:
            nn.init.normal_(emb.weight, std=0.01)
        self.n_fields = len(cat_vocab) + len(bag_vocab) + n_dense

    def forward(self, cat: torch.Tensor, bag: torch.Tensor | None = None,
                dense: torch.Tensor | None = None) -> torch.Tensor:
        fields = [emb(cat[:, i]) for i, emb in enumerate(self.cat)]
        for i, emb in enumerate(self.bag):
            ids = bag[:, i]
            fields.append(emb(ids).sum(1) / (ids > 0).sum(1, keepdim=True).clamp(min=1))
        out = torch.stack(fields, 1) if fields else None
        if self.dense is not None:
            d = dense[:, :, None] * self.dense[None]
            out = d if out is None else torch.cat([out, d], 1)
        return out


def mlp(dims: list[int], dropout: float = 0.0, last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class MaskBlock(nn.Module):
    """MaskNet's instance-guided mask: the flat embedding re-weighted element-wise by a mask computed from it."""

    def __init__(self, in_dim: int, out_dim: int, reduction: int = 2):
        super().__init__()
        wide = in_dim * reduction
        self.mask = nn.Sequential(nn.Linear(in_dim, wide), nn.ReLU(), nn.Linear(wide, in_dim))
        self.ln_in = nn.LayerNorm(in_dim)
        self.hidden = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.ln_in(v) * self.mask(v))


class GatedCross(nn.Module):
    """Gated cross network (GDCN): x_{l+1} = x0 * (W x_l + b) * sigmoid(G x_l) + x_l, then a projection."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 2):
        super().__init__()
        self.w = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(layers))
        self.g = nn.ModuleList(nn.Linear(in_dim, in_dim, bias=False) for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = v
        for w, g in zip(self.w, self.g, strict=True):
            x = v * w(x) * torch.sigmoid(g(x)) + x
        return self.out(x)


def interaction_modules(in_dim: int, out_dim: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([MaskBlock(in_dim, out_dim), GatedCross(in_dim, out_dim),
                          mlp([in_dim, 2 * out_dim, out_dim], dropout)])


def tower(in_dim: int, hidden: list[int], dropout: float) -> nn.Sequential:
    return nn.Sequential(mlp([in_dim, *hidden], dropout), nn.Linear(hidden[-1], 1))


class Ranker(nn.Module):
    """Common front end; subclasses map the flat field embedding to one logit per task."""

    def __init__(self, fields: FieldEmbedding, tasks: int, embed_dim: int):
        super().__init__()
        self.fields, self.tasks = fields, tasks
        self.in_dim = fields.n_fields * embed_dim

    @classmethod
    def from_params(cls, fields: FieldEmbedding, tasks: int, p: RankerParams) -> Ranker:
        return cls(fields, tasks, p.embed_dim, p.module_dim, p.tower, p.dropout)

    def forward(self, cat, bag=None, dense=None) -> torch.Tensor:
        """Logits [B, tasks]."""
        return self.logits(self.fields(cat, bag, dense).flatten(1))

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DTN(Ranker):
    def __init__(self, fields: FieldEmbedding, tasks: int, embed_dim: int, module_dim: int = 64,
                 tower_dims: list[int] | None = None, dropout: float = 0.1):
        super().__init__(fields, tasks, embed_dim)
        tower_dims = tower_dims or [128, 64]
        self.own = nn.ModuleList(interaction_modules(self.in_dim, module_dim, dropout) for _ in range(tasks))
        self.shared = interaction_modules(self.in_dim, module_dim, dropout)
        m = len(self.shared)
        self.gate_other = nn.ModuleList(nn.Linear(self.in_dim, m * tasks) for _ in range(tasks))  # others + shared
        self.gate_own = nn.ModuleList(nn.Linear(self.in_dim, m) for _ in range(tasks))
        self.towers = nn.ModuleList(
            tower(module_dim * (2 if t == 0 else 3), tower_dims, dropout) for t in range(tasks)
        )

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        own = [torch.stack([mod(v) for mod in mods], 1) for mods in self.own]  # each [B, m, d]
        shared = torch.stack([mod(v) for mod in self.shared], 1)
        out, upstream = [], None
        for t in range(self.tasks):
            others = torch.cat([*(own[o] for o in range(self.tasks) if o != t), shared], 1)
            a = (F.softmax(self.gate_other[t](v), -1)[:, :, None] * others).sum(1)
            b = (F.softmax(self.gate_own[t](v), -1)[:, :, None] * own[t]).sum(1)
            parts = [a, b]
            if t > 0:  # task-sensitive branch: upstream own-module mix x stop-grad upstream prediction
                parts.append(upstream[0] * torch.sigmoid(upstream[1]).detach()[:, None])
            logit = self.towers[t](torch.cat(parts, 1)).squeeze(-1)
            upstream = (b, logit)
            out.append(logit)
        return torch.stack(out, 1)


class MMoE(Ranker):
    def __init__(self, fields: FieldEmbedding, tasks: int, embed_dim: int, module_dim: int = 64,
                 tower_dims: list[int] | None = None, dropout: float = 0.1, experts: int = 4):
        super().__init__(fields, tasks, embed_dim)
        self.experts = nn.ModuleList(mlp([self.in_dim, 2 * module_dim, module_dim], dropout) for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(self.in_dim, experts) for _ in range(tasks))
        self.towers = nn.ModuleList(tower(module_dim, tower_dims or [128, 64], dropout) for _ in range(tasks))

    @classmethod
    def from_params(cls, fields: FieldEmbedding, tasks: int, p: RankerParams) -> Ranker:
        return cls(fields, tasks, p.embed_dim, p.module_dim, p.tower, p.dropout, p.experts)

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        e = torch.stack([ex(v) for ex in self.experts], 1)
        return torch.stack([tw((F.softmax(g(v), -1)[:, :, None] * e).sum(1)).squeeze(-1)
                            for g, tw in zip(self.gates, self.towers, strict=True)], 1)


class SharedBottom(Ranker):
    def __init__(self, fields: FieldEmbedding, tasks: int, embed_dim: int, module_dim: int = 64,
                 tower_dims: list[int] | None = None, dropout: float = 0.1):
        super().__init__(fields, tasks, embed_dim)
        self.bottom = mlp([self.in_dim, 2 * module_dim, module_dim], dropout)
        self.towers = nn.ModuleList(tower(module_dim, tower_dims or [128, 64], dropout) for _ in range(tasks))

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        h = self.bottom(v)
        return torch.stack([tw(h).squeeze(-1) for tw in self.towers], 1)


def build_ranker(p: RankerParams, fields: FieldEmbedding, tasks: int) -> Ranker:
    """The ranker `p.model` (a name from models.registry.RANKERS) over the given field embedding."""
    return get_model("ranker", p.model).from_params(fields, tasks, p)


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   weights: list[float]) -> torch.Tensor:
    """Sum over tasks of weight x mean BCE over the rows where that task's label is defined (mask)."""
    total = logits.new_zeros(())
    for t, w in enumerate(weights):
        m = mask[:, t]
        if m.any():
            total = total + w * F.binary_cross_entropy_with_logits(logits[m, t], labels[m, t].float())
    return total
