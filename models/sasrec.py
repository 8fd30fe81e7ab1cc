"""SASRec (Kang & McAuley 2018): causal self-attention over the right-padded item sequence; pre-norm blocks by
default, RecBole's post-norm layout (LayerNorm on the embedding sum, then residual + LayerNorm per sublayer), or the
original SASRec block as RecTools has it (the query alone normed, residuals from the normed inputs; with pad_keys its
queries also attend to the left-pad slots, as RecTools' left-padded, key-unmasked attention does)."""

from __future__ import annotations

import torch
from torch import nn

from semid.models.items import ItemTable
from semid.models.params import RecommendParams
from semid.models.seqrec import SequentialRecommender

BLOCKS = ("pre_ln", "post_ln", "sasrec")
INITS = ("normal", "xavier")


def position_index(seq: torch.Tensor, positions: str) -> torch.Tensor:
    """[B, T] position of each slot of right-padded `seq`: forward counts from the first item (0, 1, ...);
    backward from the last real item (..., 1, 0), as left-padded SASRec does, so the item a prediction is made
    from always has position 0. Pads get 0 (they are zeroed anyway)."""
    t = torch.arange(seq.shape[1], device=seq.device)
    if positions == "forward":
        return t.expand_as(seq)
    lengths = (seq > 0).sum(1, keepdim=True)
    return (lengths - 1 - t).clamp(min=0)


class SASRecBlock(nn.Module):
    """The original SASRec block as RecTools 0.13 writes it: q = LN(x) attends over the raw x, the residual is added to
    q; the feed-forward (linear, activation, dropout, linear, dropout) reads LN of that and adds it to its input."""

    def __init__(self, d: int, heads: int, ffn_dim: int, dropout: float, activation: str):
        super().__init__()
        self.q_norm, self.ff_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_dim), nn.GELU() if activation == "gelu" else nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(ffn_dim, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pad_slot: bool = False) -> torch.Tensor:
        """pad_slot: prepend one zero key/value slot (a pad: its key and value are the projection biases); `mask`
        is then SASRecBlocks.pad_mask's float mask over the T + 1 keys."""
        q = self.q_norm(x)
        keys = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x], 1) if pad_slot else x
        h = q + self.attn(q, keys, keys, attn_mask=mask, need_weights=False)[0]
        f = self.ff_norm(h)
        return f + self.ffn(f)


class SASRecBlocks(nn.Module):
    """A stack of SASRecBlock, called like nn.TransformerEncoder(h, mask=...)."""

    def __init__(self, layers: int, *args):
        super().__init__()
        self.layers = nn.ModuleList(SASRecBlock(*args) for _ in range(layers))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, pad_bias: torch.Tensor | None = None) -> torch.Tensor:
        """pad_bias [B]: every query also attends to one zero pad slot whose logit gets pad_bias added, log(number of
        pads) or -inf: n identical pad slots in one. Its mask is built once for all the layers."""
        if pad_bias is not None:
            mask = self.pad_mask(mask, pad_bias, h.dtype)
        for layer in self.layers:
            h = layer(h, mask, pad_bias is not None)
        return h

    def pad_mask(self, causal: torch.Tensor, pad_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B * heads, T, T + 1] float attention mask: column 0 the pad slot's pad_bias, then the causal mask."""
        t = causal.shape[0]
        items = torch.zeros(t, t, dtype=dtype, device=causal.device).masked_fill(causal, float("-inf"))
        full = torch.cat([pad_bias.to(dtype)[:, None, None].expand(-1, t, 1), items.expand(len(pad_bias), t, t)], 2)
        return full.repeat_interleave(self.layers[0].attn.num_heads, 0)


class SASRec(SequentialRecommender):
    """Causal self-attention over the (right-padded) item sequence; scores = hidden @ item table."""

    def __init__(self, items: ItemTable, max_len: int = 50, layers: int = 2, heads: int = 2, dropout: float = 0.5,
                 positions: str = "forward", block: str = "pre_ln", ffn_dim: int | None = None,
                 activation: str = "relu", position_std: float = 0.02, init: str = "normal",
                 pad_keys: bool = False):
        super().__init__()
        if positions not in ("forward", "backward"):
            raise ValueError(f"positions must be 'forward' or 'backward', not {positions!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, not {block!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {init!r}")
        if pad_keys and block != "sasrec":
            raise ValueError(f"pad_keys needs block='sasrec' (RecTools' layout), not {block!r}")
        self.positions, self.block, self.init, self.pad_keys = positions, block, init, pad_keys
        d = items.dim
        if d % heads:
            raise ValueError(f"item dimension {d} is not divisible by heads={heads}")
        self.items, self.max_len = items, max_len
        self.pos = nn.Embedding(max_len, d)
        nn.init.normal_(self.pos.weight, std=position_std)
        self.drop = nn.Dropout(dropout)
        self.input_norm = nn.LayerNorm(d) if block == "post_ln" else None
        if block == "sasrec":
            self.blocks = SASRecBlocks(layers, d, heads, ffn_dim or d, dropout, activation)
        else:
            layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ffn_dim or d, dropout=dropout,
                                               activation=activation, batch_first=True, norm_first=block == "pre_ln")
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d, eps=1e-8 if block == "sasrec" else 1e-5)
        # normal: ID rows N(0, .02) enter scaled by sqrt(d), positions N(0, position_std). xavier (RecTools): every
        # matrix of the model and the ID table xavier-normal, item rows enter unscaled; codebook tables are kept.
        self.input_scale = d ** 0.5 if init == "normal" else 1.0
        if init == "xavier":
            for module in (self.pos, self.blocks, items.ids):
                for w in (module.parameters() if module is not None else ()):
                    if w.dim() > 1:
                        nn.init.xavier_normal_(w)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1))

    @classmethod
    def from_params(cls, items: ItemTable, p: RecommendParams) -> SASRec:
        return cls(items, max_len=p.max_len, layers=p.layers, heads=p.heads, dropout=p.dropout, positions=p.positions,
                   block=p.block, ffn_dim=p.ffn_dim, activation=p.activation, position_std=p.position_std,
                   init=p.init, pad_keys=p.pad_keys)

    def encode(self, seq: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """seq [B, T] right-padded item indices (0 = pad) -> hidden [B, T, d]. Pads never reach real positions
        because attention is causal and pads only follow real items."""
        t = seq.shape[1]
        h = table[seq] * self.input_scale + self.pos.weight[position_index(seq, self.positions)]
        if self.input_norm is not None:
            h = self.input_norm(h)
        h = self.drop(h * (seq > 0).unsqueeze(-1))
        if self.pad_keys:  # RecTools left-pads to max_len and masks no key: every query also sees max_len - L pads
            pads = (self.max_len - (seq > 0).sum(1)).clamp(min=0)
            bias = torch.where(pads > 0, pads.clamp(min=1).to(h.dtype).log(), float("-inf"))
            h = self.blocks(h, mask=self.causal[:t, :t], pad_bias=bias)
        else:
            h = self.blocks(h, mask=self.causal[:t, :t])
        return self.norm(h)
