"""Synthetic large catalogue (issue 14): SYNTHETIC items, interactions and item vectors built from real Amazon
texts, for scale-out runs from 10k to 1M items. Nothing it writes is real data; its manifest says so.

    python benchmarks/synthetic.py --items 1000000 --interactions 10000000 --out DIR --seed 0 [--vectors]

Writes into DIR (and nothing else):
- items-00000.parquet ...: item_id, title, brand, category, title_from. Each item takes its title from one real item
  and its brand and category from two *other* real items of the same source dataset (Scientific, Office, Beauty in
  ../shared/datasets). Every (title, brand, category) is distinct: a colliding item draws its brand and category
  again (seeded); only if that fails 50 times is a variant token " (variant k)" appended to the title (the manifest
  counts both; at 1M items no token was needed). `title_from` names the real item (`<dataset>/<id>`).
- events-00000.parquet ...: user_id, item_id, ts (epoch seconds). Item popularity is Zipf (exponent --zipf) over a
  seeded random ranking of the items; a user's session length is 5 + floor(LogNormal(mu, --session-sigma)),
  mu set so the mean length is interactions / users; no item repeats within a user; timestamps strictly increase
  per user. Defaults fit Amazon Beauty (5-core): --zipf 0.70 is the least-squares slope of log count on log rank
  (ranks 10 .. n/2; Sports 0.67, Toys 0.59), --session-sigma 1.19 the std of ln(length - 4.5), mean length 8.88.
  Written user block by user block (--events-per-file rows each): memory is bounded by one block plus
  O(users + items) small arrays, never by the interaction count.
- vectors.npy (with --vectors): float32 (items x dim), written through np.lib.format.open_memmap block by block.
- manifest.json: "synthetic": true, the command, seed, parameters, sources (with sha256), counts, realised
  statistics and the sha256 of every written file. The parquet files carry the schema metadata semid.synthetic=true.

Why the vector noise is scaled to the nearest-neighbour distance. 1M items come from ~19k real titles, so each
real vector has ~50 synthetic copies. If the copies are (nearly) the real vector, or get isotropic noise that is
small next to the gaps between real items, the quantizer cannot tell them apart and they share a semantic ID:
~1 - 19k/1M = 98 % duplicates, a number that says nothing about the quantizer. One global noise scale large
enough to separate the copies everywhere is larger than the gaps in dense regions (real NN distances: 1st,
50th, 90th percentile 0.10, 0.54, 0.76): there it mixes neighbouring real items and the quantizer is measured on noise.
Noise scaled per item to its source's nearest-neighbour distance (expected noise norm = --noise-scale x NN
distance, default 0.3) keeps every copy nearer its source than any other real item and spreads the copies of one
source over a fixed fraction of its local gap, in dense and sparse regions alike: the coarse structure is the real
catalogue, and the fine levels have real work (separating siblings). Measured on the 1M output (seed 0, 1,000
sampled items): the nearest real item is the source for 100 %, the nearest synthetic item is a sibling for 99.9 %
at a median 0.39 x the source's NN distance, none has an identical neighbour; mean cosine to the source 0.986.
Vectors are L2-normalised like sentence-transformer outputs. Real vectors are the project's encoder on the real
items' pipeline texts (semid.tasks.embed.encode_texts, served from the embedding cache when present) or
--real-vectors (rows aligned with load_real_items).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semid.tasks.fsutil import sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = {  # dataset folder -> the item file read
    "amazon-scientific": "Scientific.item.json",
    "amazon-office": "Office.item.json",
    "amazon-beauty": "item_text.json",
}
MIN_LEN = 5  # the pipeline's data.min_user_interactions default
BEAUTY_MEAN_LEN = 8.876  # Beauty: 198,502 interactions / 22,363 users
BEAUTY_SIGMA = 1.19  # std of ln(L - 4.5) over Beauty's users (Sports 1.14, Toys 1.18)
BEAUTY_ZIPF = 0.70  # least-squares slope of log count on log rank, Beauty ranks 10..n/2 (Sports 0.67, Toys 0.59)
T0 = 1_388_534_400  # 2014-01-01 UTC: first session start
SPAN = 365 * 86_400  # sessions start within one year
GAP_MEDIAN = 86_400.0  # median seconds between a user's events (lognormal, sigma 1.5), at least 1 s
# Beauty's top-level categories, which open every category path (a part before them is the brand): the values
# most often right after a brand that also open paths of items without a brand
BEAUTY_TOP = {"Skin Care", "Hair Care", "Makeup", "Tools & Accessories", "Bath & Body", "Fragrance"}
META = {b"semid.synthetic": b"true", b"semid.generator": b"benchmarks/synthetic.py"}
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
_PRICE = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def default_data_dir() -> Path:
    return Path(os.environ.get("SEMID_DATA_MIRROR") or REPO.parent / "shared" / "datasets")


# ----------------------------------------------------------------------------- real items


def _beauty_parts(text: str, top_level: set[str]) -> tuple[str, str, str]:
    """title; [price;] [brand;] sub-categories -> (title, brand, category). ';' inside HTML entities is kept."""
    parts = [p.replace("\0", ";") for p in _ENTITY.sub(lambda m: f"&{m.group(1)}\0", text).split(";")]
    title, rest = parts[0].strip(), [p.strip() for p in parts[1:]]
    if rest and _PRICE.match(rest[0]):
        rest = rest[1:]
    brand = ""
    if rest and rest[0] not in top_level:
        brand, rest = rest[0], rest[1:]
    return title, brand, ",".join(p for p in rest if p)


def load_real_items(data_dir: Path) -> pd.DataFrame:
    """One row per real item of the sources: source, src_id, title, brand, category and `text`, the item text the
    pipeline embeds for it (tasks/validate.py: LC-Rec title;brand;categories, Beauty the whole string)."""
    frames = []
    for ds, fname in SOURCES.items():
        raw = json.loads((data_dir / ds / fname).read_text(encoding="utf-8"))
        if ds == "amazon-beauty":
            rows = [(k, *_beauty_parts(v, BEAUTY_TOP), v) for k, v in raw.items()]
        else:
            rows = []
            for k, v in raw.items():
                t, b, c = ((v or {}).get(f, "") or "" for f in ("title", "brand", "categories"))
                text = ";".join(p for p in (t, b, c) if p.strip()) if t.strip() else ""
                rows.append((k, t.strip(), b.strip(), c.strip(), text))
        df = pd.DataFrame(rows, columns=["src_id", "title", "brand", "category", "text"])
        df.insert(0, "source", ds)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- items


def _draw_from_source(rng: np.random.Generator, source: np.ndarray, pools: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(source), dtype=np.int64)
    for s, pool in enumerate(pools):
        mask = source == s
        out[mask] = pool[rng.integers(0, len(pool), int(mask.sum()))]
    return out


def recombine(real: pd.DataFrame, n_items: int, rng: np.random.Generator, max_rounds: int = 50) -> dict:
    """Donor real items for each synthetic item's title, brand and category, every triple distinct."""
    src_codes, _ = pd.factorize(real["source"])
    has = {f: (real[f].str.len() > 0).to_numpy() for f in ("title", "brand", "category")}
    eligible_titles = np.flatnonzero(has["title"])
    # titles used evenly: each round is a fresh permutation of the real titles
    rounds = math.ceil(n_items / len(eligible_titles))
    t_donor = np.concatenate([rng.permutation(eligible_titles) for _ in range(rounds)])[:n_items]
    source = src_codes[t_donor]
    pools = {f: [np.flatnonzero(has[f] & (src_codes == s)) for s in range(src_codes.max() + 1)]
             for f in ("brand", "category")}
    codes = {f: pd.factorize(real[f])[0].astype(np.int64) for f in ("title", "brand", "category")}
    nb, nc = codes["brand"].max() + 1, codes["category"].max() + 1
    b_donor = np.empty(n_items, dtype=np.int64)
    c_donor = np.empty(n_items, dtype=np.int64)
    redo = np.arange(n_items)
    redrawn = 0
    for round_ in range(max_rounds):
        if round_:
            redrawn += len(redo)
        for donor, field in ((b_donor, "brand"), (c_donor, "category")):
            todo = redo
            while len(todo):  # a different real item than the title's
                donor[todo] = _draw_from_source(rng, source[todo], pools[field])
                todo = todo[donor[todo] == t_donor[todo]]
        key = (codes["title"][t_donor] * nb + codes["brand"][b_donor]) * nc + codes["category"][c_donor]
        order = np.argsort(key, kind="stable")
        dup = np.zeros(n_items, dtype=bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]  # the later item of a colliding pair draws again
        redo = np.flatnonzero(dup)
        if not len(redo):
            break
    variant = np.zeros(n_items, dtype=np.int64)
    if len(redo):  # still colliding after max_rounds: a variant token makes the text distinct
        key = (codes["title"][t_donor] * nb + codes["brand"][b_donor]) * nc + codes["category"][c_donor]
        order = np.argsort(key, kind="stable")
        ks = key[order]
        starts = np.r_[0, np.flatnonzero(ks[1:] != ks[:-1]) + 1]
        rank = np.arange(n_items) - np.repeat(starts, np.diff(np.r_[starts, n_items]))
        variant[order] = rank
    return {"title": t_donor, "brand": b_donor, "category": c_donor, "variant": variant,
            "redrawn": int(redrawn), "variants": int((variant > 0).sum())}


def _ids(prefix: str, idx: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(idx, type=pa.int64()).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def item_id_width(n_items: int) -> int:
    return max(7, len(str(n_items - 1)))


def write_items(real: pd.DataFrame, donors: dict, out: Path, per_file: int) -> list[Path]:
    n = len(donors["title"])
    titles, brands, cats = (real[f].to_numpy(dtype=object) for f in ("title", "brand", "category"))
    origin = (real["source"] + "/" + real["src_id"]).to_numpy(dtype=object)
    width = item_id_width(n)
    paths = []
    for k, start in enumerate(range(0, n, per_file)):
        sl = slice(start, min(n, start + per_file))
        title = titles[donors["title"][sl]]
        v = donors["variant"][sl]
        if v.any():
            title = np.array([t if x == 0 else f"{t} (variant {x})" for t, x in zip(title, v, strict=True)],
                             dtype=object)
        table = pa.table({
            "item_id": _ids("i", np.arange(sl.start, sl.stop), width),
            "title": pa.array(title, type=pa.string()),
            "brand": pa.array(brands[donors["brand"][sl]], type=pa.string()),
            "category": pa.array(cats[donors["category"][sl]], type=pa.string()),
            "title_from": pa.array(origin[donors["title"][sl]], type=pa.string()),
        }).replace_schema_metadata(META)
        path = out / f"items-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- interactions


def session_mu(mean_len: float, sigma: float) -> float:
    """mu with E[5 + floor(LogNormal(mu, sigma))] ~= mean_len (floor taken as -0.5 on average)."""
    if mean_len <= MIN_LEN:
        raise SystemExit(f"mean session length {mean_len:.2f} must exceed {MIN_LEN} (fewer users)")
    return math.log(mean_len - MIN_LEN + 0.5) - sigma**2 / 2


def session_lengths(n_inter: int, mean_len: float, sigma: float, max_len: int, rng: np.random.Generator):
    """Per-user lengths summing to exactly n_inter, each >= 5 (the remainder goes to the last users)."""
    if n_inter < MIN_LEN:
        raise SystemExit(f"--interactions must be at least {MIN_LEN}")
    mu = session_mu(mean_len, sigma)
    parts, total = [], 0
    block = max(1024, int(n_inter / mean_len * 1.05) + 1)
    while total < n_inter:
        lens = MIN_LEN + np.floor(rng.lognormal(mu, sigma, block)).astype(np.int64)
        np.minimum(lens, max_len, out=lens)
        parts.append(lens.astype(np.int32))
        total += int(lens.sum())
    lens = np.concatenate(parts)
    cum = np.cumsum(lens, dtype=np.int64)
    k = int(np.searchsorted(cum, n_inter))  # user k is the one that crosses n_inter
    lens = lens[: k + 1].copy()
    lens[k] = n_inter - (int(cum[k - 1]) if k else 0)
    if lens[k] < MIN_LEN and k:  # too short a remainder joins the previous user
        lens[k - 1] += lens[k]
        lens = lens[:k]
    return lens, mu


def zipf_cdf(n_items: int, a: float) -> np.ndarray:
    w = np.arange(1, n_items + 1, dtype=np.float64) ** -a
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _no_repeats(users: np.ndarray, items: np.ndarray, draw, n_items: int, rng: np.random.Generator) -> int:
    """Redraw an item that repeats within a user's session (Zipf first, uniform after 20 rounds)."""
    redrawn = 0
    for round_ in range(1000):
        key = users * n_items + items
        order = np.argsort(key, kind="stable")
        dup = order[1:][key[order[1:]] == key[order[:-1]]]
        if not len(dup):
            return redrawn
        redrawn += len(dup)
        items[dup] = draw(len(dup)) if round_ < 20 else rng.integers(0, n_items, len(dup))
    raise RuntimeError("could not make sessions repeat-free (session length close to the item count?)")


def write_events(n_items: int, n_inter: int, out: Path, rng: np.random.Generator, zipf: float, mean_len: float,
                 sigma: float, max_len: int, per_file: int) -> dict:
    lens, mu = session_lengths(n_inter, mean_len, sigma, max_len, rng)
    n_users = len(lens)
    cdf = zipf_cdf(n_items, zipf)
    by_rank = rng.permutation(n_items)  # the item at each popularity rank
    starts = T0 + rng.integers(0, SPAN, n_users)
    counts = np.zeros(n_items, dtype=np.int64)

    def draw(n: int) -> np.ndarray:
        rank = np.searchsorted(cdf, rng.random(n), side="right")
        return by_rank[np.minimum(rank, n_items - 1)]

    # user blocks of about per_file rows; whole users per file
    cum = np.cumsum(lens, dtype=np.int64)
    bounds = np.searchsorted(cum, np.arange(per_file, n_inter, per_file), side="left") + 1
    bounds = np.unique(np.r_[0, bounds, n_users])
    del cum
    uwidth, iwidth = max(8, len(str(n_users - 1))), item_id_width(n_items)
    paths, repeats = [], 0
    for k, (u0, u1) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        lu = lens[u0:u1].astype(np.int64)
        users = np.repeat(np.arange(u0, u1, dtype=np.int64), lu)
        items = draw(len(users))
        repeats += _no_repeats(users, items, draw, n_items, rng)
        gaps = np.maximum(1, np.floor(rng.lognormal(math.log(GAP_MEDIAN), 1.5, len(users)))).astype(np.int64)
        first = np.r_[0, np.cumsum(lu)[:-1]]
        gaps[first] = 0
        run = np.cumsum(gaps)
        ts = starts[users] + run - np.repeat(run[first], lu)  # strictly increasing within each user
        counts += np.bincount(items, minlength=n_items)
        table = pa.table({"user_id": _ids("u", users, uwidth), "item_id": _ids("i", items, iwidth),
                          "ts": pa.array(ts, type=pa.int64())}).replace_schema_metadata(META)
        path = out / f"events-{k:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
        del users, items, gaps, run, ts, table
    top = np.sort(counts)[::-1]
    n_top = max(1, n_items // 100)
    return {
        "paths": paths,
        "stats": {
            "users": int(n_users), "interactions": int(n_inter), "mean_session_length": float(lens.mean()),
            "min_session_length": int(lens.min()), "median_session_length": float(np.median(lens)),
            "max_session_length": int(lens.max()), "session_mu": mu,
            "top1pct_items_share": float(top[:n_top].sum() / n_inter), "top_item_share": float(top[0] / n_inter),
            "items_without_interactions": int((counts == 0).sum()), "within_user_repeats_redrawn": int(repeats),
        },
    }


# ----------------------------------------------------------------------------- vectors


def real_vectors(real: pd.DataFrame, path: str | None) -> tuple[np.ndarray, str]:
    if path:
        vecs = np.load(path, mmap_mode="r")
        if vecs.shape[0] != len(real):
            raise SystemExit(f"--real-vectors has {vecs.shape[0]} rows; the real items are {len(real)} "
                             "(scientific, office, beauty item files in file order, see load_real_items)")
        return np.asarray(vecs, dtype=np.float32), f"file {path} (sha256 {sha256_file(Path(path))})"
    sys.path.insert(0, str(REPO))
    from semid.tasks.config import load_config
    from semid.tasks.embed import encode_texts

    cfg = load_config(None)
    rows = np.flatnonzero(real["title"].str.len() > 0)  # only title donors need a vector
    got, fresh, hits = encode_texts(real["text"].iloc[rows].tolist(), cfg)
    vecs = np.zeros((len(real), got.shape[1]), dtype=np.float32)
    vecs[rows] = got
    return vecs, f"semid.tasks.embed.encode_texts, {cfg.embed.model} ({cfg.embed.backend}), {hits} cached, " \
                 f"{fresh} encoded now"


def nn_distance(vecs: np.ndarray, k: int = 16) -> np.ndarray:
    """Each real vector's L2 distance to its nearest *different* vector: faiss proposes the k nearest, the
    distances are recomputed exactly (faiss' float32 |x|^2 + |y|^2 - 2xy puts a vector ~3e-4 from itself), the
    item itself and identical vectors (same text) are skipped, and the median is used when all k are identical."""
    import faiss

    rows = np.flatnonzero(np.linalg.norm(vecs, axis=1) > 0)  # items without a title have no vector
    x = np.ascontiguousarray(vecs[rows], dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, cand = index.search(x, min(k, len(x)))
    nn = np.full(len(x), np.inf)
    for s in range(0, len(x), 2048):
        c = cand[s:s + 2048]
        d = np.linalg.norm(x[c].astype(np.float64) - x[s:s + 2048, None].astype(np.float64), axis=2)
        d[(c == np.arange(s, s + len(c))[:, None]) | (c < 0) | (d < 1e-6)] = np.inf
        nn[s:s + len(c)] = d.min(axis=1)
    fallback = float(np.median(nn[np.isfinite(nn)]))
    out = np.zeros(len(vecs), dtype=np.float32)
    out[rows] = np.where(np.isfinite(nn), nn, fallback)
    return out


def write_vectors(real_vecs: np.ndarray, nn: np.ndarray, title_donor: np.ndarray, scale: float, path: Path,
                  rng: np.random.Generator, block: int = 65_536) -> dict:
    """The .npy is created with np.lib.format.open_memmap; each block is written through its own short-lived
    memory map of its rows, so the written pages leave this process's resident set block by block."""
    n, dim = len(title_donor), real_vecs.shape[1]
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    header = mm.offset
    del mm
    cos_sum = 0.0
    for start in range(0, n, block):
        src = title_donor[start:start + block]
        base = real_vecs[src]
        sd = (scale * nn[src] / math.sqrt(dim)).astype(np.float32)
        v = base + rng.standard_normal((len(src), dim), dtype=np.float32) * sd[:, None]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cos_sum += float(((v * base).sum(axis=1) / np.linalg.norm(base, axis=1)).sum())
        rows = np.memmap(path, dtype=np.float32, mode="r+", offset=header + start * dim * 4, shape=v.shape)
        rows[:] = v
        rows.flush()
        del rows
    return {"dim": int(dim), "mean_cosine_to_source": cos_sum / n, "real_nn_distance_median": float(np.median(nn))}


# ----------------------------------------------------------------------------- main


def generate(out: Path, n_items: int, n_inter: int, seed: int = 0, data_dir: Path | None = None,
             zipf: float = BEAUTY_ZIPF, mean_len: float | None = None, users: int | None = None,
             session_sigma: float = BEAUTY_SIGMA, max_len: int = 1000, items_per_file: int = 200_000,
             events_per_file: int = 2_000_000, vectors: bool = False, noise_scale: float = 0.3,
             real_vectors_path: str | None = None, command: str | None = None) -> dict:
    t_start = time.time()
    data_dir = Path(data_dir or default_data_dir())
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if re.match(r"(items|events)-\d{5}\.parquet$|vectors\.npy$|manifest\.json$",
                                                   p.name)]
    for p in stale:  # a smaller earlier run must not leave files behind that the globs would pick up
        p.unlink()
    if users:
        mean_len = n_inter / users
    mean_len = mean_len or BEAUTY_MEAN_LEN
    max_len = min(max_len, max(MIN_LEN, n_items // 2))
    items_rng, events_rng, vectors_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))

    real = load_real_items(data_dir)
    donors = recombine(real, n_items, items_rng)
    item_paths = write_items(real, donors, out, items_per_file)
    t_items = time.time()
    ev = write_events(n_items, n_inter, out, events_rng, zipf, mean_len, session_sigma, max_len, events_per_file)
    t_events = time.time()
    vec_info = None
    if vectors:
        rv, how = real_vectors(real, real_vectors_path)
        nn = nn_distance(rv)
        vec_info = {"real_vectors": how, "noise_scale_x_nn_distance": noise_scale,
                    **write_vectors(rv, nn, donors["title"], noise_scale, out / "vectors.npy", vectors_rng)}
    t_vectors = time.time()
    written = [*item_paths, *ev["paths"], *([out / "vectors.npy"] if vectors else [])]
    manifest = {
        "synthetic": True,
        "note": "SYNTHETIC data: real Amazon item texts recombined, simulated interactions; not a real catalogue. "
                "Every result computed on it must say so.",
        "suggested_dataset_name": f"synthetic-{n_items}",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "generator": "benchmarks/synthetic.py",
        "seed": seed,
        "sources": {ds: {"file": f"{ds}/{f}", "sha256": sha256_file(data_dir / ds / f)} for ds, f in SOURCES.items()},
        "parameters": {
            "items": n_items, "interactions": n_inter, "zipf_exponent": zipf, "mean_session_length": mean_len,
            "session_sigma": session_sigma, "min_session_length": MIN_LEN, "max_session_length": max_len,
            "items_per_file": items_per_file, "events_per_file": events_per_file, "vectors": vectors,
            "noise_scale": noise_scale if vectors else None, "timestamp_start": T0, "session_start_span_s": SPAN,
            "gap_median_s": GAP_MEDIAN,
        },
        "counts": {
            "real_items": len(real), "real_titles_used": int(len(np.unique(donors["title"]))),
            "items": n_items, "redrawn_for_distinctness": donors["redrawn"],
            "variant_tokens_appended": donors["variants"], **ev["stats"],
        },
        "vectors": vec_info,
        "seconds": {"items": round(t_items - t_start, 2), "events": round(t_events - t_items, 2),
                    "vectors": round(t_vectors - t_events, 2)},
        "files": {p.name: sha256_file(p) for p in written},
        "pipeline_config": {"data": {"dataset": f"synthetic-{n_items}", "local": {
            "items": str(out / "items-*.parquet"), "interactions": str(out / "events-*.parquet"),
            "user_col": "user_id", "item_col": "item_id", "timestamp_col": "ts",
            "text_cols": ["title", "brand", "category"]}}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--interactions", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None, help="real datasets (default ../shared/datasets or "
                    "$SEMID_DATA_MIRROR)")
    ap.add_argument("--zipf", type=float, default=BEAUTY_ZIPF, help="popularity exponent (Beauty fit 0.70)")
    ap.add_argument("--users", type=int, default=None, help="default: interactions / --mean-length")
    ap.add_argument("--mean-length", type=float, default=None, help=f"mean session length (Beauty {BEAUTY_MEAN_LEN})")
    ap.add_argument("--session-sigma", type=float, default=BEAUTY_SIGMA)
    ap.add_argument("--max-length", type=int, default=1000)
    ap.add_argument("--items-per-file", type=int, default=200_000)
    ap.add_argument("--events-per-file", type=int, default=2_000_000)
    ap.add_argument("--vectors", action="store_true", help="also write vectors.npy")
    ap.add_argument("--noise-scale", type=float, default=0.3, help="noise norm / the source's NN distance")
    ap.add_argument("--real-vectors", default=None, help=".npy aligned with load_real_items (default: embed)")
    a = ap.parse_args(argv)
    if a.items < 2 or a.interactions < MIN_LEN:
        ap.error("--items must be >= 2 and --interactions >= 5")
    m = generate(a.out, a.items, a.interactions, a.seed, a.data_dir, a.zipf, a.mean_length, a.users,
                 a.session_sigma, a.max_length, a.items_per_file, a.events_per_file, a.vectors, a.noise_scale,
                 a.real_vectors)
    c = m["counts"]
    print(f"SYNTHETIC: {c['items']} items, {c['users']} users, {c['interactions']} interactions -> {a.out} "
          f"({len(m['files'])} files, {sum(m['seconds'].values()):.1f} s)")


if __name__ == "__main__":
    main()
