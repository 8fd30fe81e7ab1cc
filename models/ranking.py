"""Multi-task ranking data and training: ml-100k as two tasks (interact, like) with user/item features and the
item's semantic-ID codes, or a CSV sample's columns (Ali-CCP / AliExpress: click + conversion); AUC per task.

ml-100k tasks: `interact` = rated pair (1) vs a sampled pair the user never rated (0); `like` = rating >= 4,
defined on rated pairs only (conditional on interact). Split per user by time: last 10 % of each user's
ratings = test, the 10 % before = validation. Features: user id, age bucket, gender, occupation, item id,
release decade, genres (multi-valued) and, optionally, the item's semantic-ID codes (one field per level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from semid.models.dtn import FieldEmbedding, Ranker, build_ranker, multitask_loss
from semid.models.metrics import auc
from semid.models.params import RankerParams
from semid.models.training import fit

AGE_EDGES = [18, 25, 35, 45, 50, 56]


@dataclass
class RankData:
    tasks: list[str]
    cat_fields: list[str]
    cat_vocab: list[int]
    bag_fields: list[str] = field(default_factory=list)
    bag_vocab: list[int] = field(default_factory=list)
    dense_fields: list[str] = field(default_factory=list)
    splits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # cat, bag, dense, labels, mask


def _codes(values: pd.Series) -> tuple[np.ndarray, int]:
    """Category ids 1..V (0 = unknown) and vocab size V + 1."""
    cats = pd.Categorical(values.astype("string").fillna("?"))
    return cats.codes.astype(np.int64) + 1, len(cats.categories) + 1


def movielens_tasks(tables: dict[str, pd.DataFrame], rc: RankerParams, sid_codes: np.ndarray | None = None,
                    codebook_size: int = 256) -> RankData:
    inter = tables["interactions"].sort_values(["user_id", "timestamp", "position"]).reset_index(drop=True)
    users, items = tables["users"].set_index("user_id"), tables["items"].set_index("item_id")
    n_users, n_items = int(users.index.max()) + 1, int(items.index.max()) + 1
    # user / item attribute tables indexed by id
    age = np.digitize(pd.to_numeric(users["age"], errors="coerce").fillna(0).to_numpy(), AGE_EDGES) + 1
    gender, v_gender = _codes(users["gender"])
    occ, v_occ = _codes(users["occupation"])
    u_feat = np.zeros((n_users, 3), dtype=np.int64)
    u_feat[users.index.to_numpy()] = np.stack([age, gender, occ], 1)
    decade = (pd.to_numeric(items["year"], errors="coerce") // 10).astype("Int64").astype("string")
    dec, v_dec = _codes(decade)
    genre_lists = [[g.strip() for g in str(v).split(",") if g.strip()] for v in items["genres"].fillna("")]
    vocab = {g: i + 1 for i, g in enumerate(sorted({g for gs in genre_lists for g in gs}))}
    width = max(1, max(len(g) for g in genre_lists))
    i_genre = np.zeros((n_items, width), dtype=np.int64)
    i_dec = np.zeros(n_items, dtype=np.int64)
    for row, (iid, gs) in enumerate(zip(items.index.to_numpy(), genre_lists, strict=True)):
        i_genre[iid, : len(gs)] = [vocab[g] for g in gs]
        i_dec[iid] = dec[row]
    cat_fields = ["user_id", "age", "gender", "occupation", "item_id", "decade"]
    cat_vocab = [n_users, len(AGE_EDGES) + 2, v_gender, v_occ, n_items, v_dec]
    if sid_codes is not None:
        cat_fields += [f"sid_{level}" for level in range(sid_codes.shape[1])]
        cat_vocab += [int(max(codebook_size, sid_codes[:, level].max() + 1)) for level in range(sid_codes.shape[1])]

    # per-user time split of the rated pairs
    rank_in_user = inter.groupby("user_id").cumcount().to_numpy()
    size = inter.groupby("user_id")["item_id"].transform("size").to_numpy()
    n_eval = np.maximum(1, np.round(size * 0.1)).astype(int)
    part = np.where(rank_in_user >= size - n_eval, "test",
                    np.where(rank_in_user >= size - 2 * n_eval, "valid", "train"))
    rated = {u: set(g) for u, g in inter.groupby("user_id")["item_id"]}
    rng = np.random.default_rng(rc.seed)

    def rows(u: np.ndarray, i: np.ndarray, interact: np.ndarray, like: np.ndarray) -> dict[str, torch.Tensor]:
        cols = [u, *u_feat[u].T, i, i_dec[i]]
        if sid_codes is not None:
            cols += list(sid_codes[i].T)
        labels = np.stack([interact, like], 1)
        mask = np.stack([np.ones_like(interact, dtype=bool), interact.astype(bool)], 1)
        return {"cat": torch.from_numpy(np.stack(cols, 1)), "bag": torch.from_numpy(i_genre[i][:, None, :]),
                "labels": torch.from_numpy(labels), "mask": torch.from_numpy(mask)}

    data = RankData(tasks=["interact", "like"], cat_fields=cat_fields, cat_vocab=cat_vocab,
                    bag_fields=["genres"], bag_vocab=[len(vocab) + 1])
    for name in ("train", "valid", "test"):
        sel = inter[part == name]
        pu, pi = sel["user_id"].to_numpy(), sel["item_id"].to_numpy()
        nu = np.repeat(pu, rc.neg_ratio)
        ni = rng.integers(0, n_items, len(nu))
        for j in range(len(nu)):  # resample the (rare) draws the user actually rated
            while ni[j] in rated[nu[j]]:
                ni[j] = rng.integers(0, n_items)
        like = (sel["rating"].to_numpy() >= rc.like_threshold).astype(np.int64)
        u, i = np.concatenate([pu, nu]), np.concatenate([pi, ni])
        interact = np.concatenate([np.ones(len(pu), np.int64), np.zeros(len(nu), np.int64)])
        data.splits[name] = rows(u, i, interact, np.concatenate([like, np.zeros(len(nu), np.int64)]))
    return data


def frame_tasks(frames: dict[str, pd.DataFrame], labels: list[str], conditional: bool = True) -> RankData:
    """Ali-CCP / AliExpress samples (one frame per split): integer categorical columns, float dense columns, two
    labels. The second task is defined where the first label is 1 when `conditional` (conversion after click)."""
    if "valid" not in frames:  # AliExpress ships train/test only: validate on the test sample
        frames = {**frames, "valid": frames["test"]}
    cols = [c for c in frames["train"].columns if c not in labels and c != "search_id"]
    dense = [c for c in cols if c.startswith(("D", "numerical"))]
    cat = [c for c in cols if c not in dense]
    vocab = [int(max(f[c].max() for f in frames.values())) + 1 for c in cat]
    data = RankData(tasks=labels, cat_fields=cat, cat_vocab=vocab, dense_fields=dense)
    for name, f in frames.items():
        y = f[labels].to_numpy(np.int64)
        mask = np.ones_like(y, dtype=bool)
        if conditional:
            mask[:, 1] = y[:, 0] == 1
        data.splits[name] = {"cat": torch.from_numpy(f[cat].to_numpy(np.int64)),
                             "dense": torch.from_numpy(f[dense].to_numpy(np.float32)),
                             "labels": torch.from_numpy(y), "mask": torch.from_numpy(mask)}
    return data


def make_ranker(data: RankData, rc: RankerParams) -> Ranker:
    """The configured ranker over the data's fields, initialised under `rc.seed`."""
    torch.manual_seed(rc.seed)
    fields = FieldEmbedding(data.cat_vocab, data.bag_vocab, len(data.dense_fields), rc.embed_dim)
    return build_ranker(rc, fields, len(data.tasks))


def _inputs(split: dict[str, torch.Tensor], idx: torch.Tensor | slice) -> tuple:
    return tuple(split[k][idx] if k in split else None for k in ("cat", "bag", "dense"))


@torch.no_grad()
def task_aucs(model: Ranker, data: RankData, which: str, batch: int = 65536) -> dict[str, float | None]:
    """AUC per task on the rows where the task's label is defined (None when one class is missing)."""
    model.eval()
    split = data.splits[which]
    n = len(split["labels"])
    logits = torch.cat([model(*_inputs(split, slice(s, s + batch))) for s in range(0, n, batch)])
    out: dict[str, float | None] = {}
    for t, task in enumerate(data.tasks):
        m = split["mask"][:, t]
        y = split["labels"][m, t].numpy()
        out[task] = auc(y, logits[m, t].numpy()) if 0 < y.sum() < len(y) else None
    return out


def train_ranker(model: Ranker, data: RankData, rc: RankerParams) -> dict[str, Any]:
    """Adam with early stopping on the mean validation AUC over tasks; restores the best weights."""
    train = data.splits["train"]
    weights = list(rc.task_weights)[: len(data.tasks)]

    def batches(gen: torch.Generator):
        perm = torch.randperm(len(train["labels"]), generator=gen)
        for s in range(0, len(perm), rc.batch_size):
            yield perm[s:s + rc.batch_size]

    def validate() -> tuple[float, dict[str, Any]]:
        valid = task_aucs(model, data, "valid")
        score = float(np.mean([v for v in valid.values() if v is not None] or [0.0]))
        return score, {"valid_mean_auc": score, **{f"valid_auc_{k}": v for k, v in valid.items()}}

    return fit(model, torch.optim.Adam(model.parameters(), lr=rc.lr), epochs=rc.epochs, patience=rc.patience,
               seed=rc.seed, batches=batches,
               loss=lambda idx, gen: multitask_loss(model(*_inputs(train, idx)), train["labels"][idx],
                                                    train["mask"][idx], weights),
               validate=validate)


def aucs_on_test(model: Ranker, data: RankData) -> dict[str, float | None]:
    """Flat test metrics: test_auc_<task> per task."""
    return {f"test_auc_{k}": v for k, v in task_aucs(model, data, "test").items()}
