"""Where a trained SASRec puts the user's own past items: per item representation, how many of the unmasked top 10
are history items, how often the test target is itself a history item (a repeat), and how many test hits the
history takes away (target in the masked top 10 but not in the unmasked one). Explains a gap between the masked
and the unmasked protocol; writes benchmarks/results/history_ranks.{jsonl,md}.

    python benchmarks/history_ranks.py amazon-scientific --set recommend.batching=shuffled --reprs id unified \
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
RECORDS = OUT / "history_ranks.jsonl"


@torch.no_grad()
def history_stats(model, split, max_len: int, batch_size: int = 1024, k: int = 10) -> dict[str, float]:
    """Test-split statistics of the model's full ranking against each user's input history."""
    from semid.models.metrics import rank_metrics, target_ranks
    from semid.models.seqrec import history_mask, scored_batches

    cols: dict[str, list[torch.Tensor]] = {c: [] for c in ("in_top", "repeat", "rank", "rank_masked")}
    for _, rows, scores, tgt in scored_batches(model, split, "test", max_len, batch_size):
        history = history_mask(rows, split.n_items)
        cols["in_top"].append(history.gather(1, scores.topk(k, dim=1).indices).sum(1))
        cols["repeat"].append(history.gather(1, tgt[:, None])[:, 0])
        cols["rank"].append(target_ranks(scores, tgt))
        cols["rank_masked"].append(target_ranks(scores, tgt, exclude=history))
    c = {name: torch.cat(v).numpy() for name, v in cols.items()}
    hit, hit_masked = c["rank"] < k, c["rank_masked"] < k
    new = ~c["repeat"]
    return {"users": len(hit), "repeat_share": float(c["repeat"].mean()),
            f"history_in_top{k}": float(c["in_top"].mean()),
            f"users_with_history_in_top{k}": float((c["in_top"] > 0).mean()),
            f"recall@{k}": float(hit.mean()), f"recall@{k}_masked": float(hit_masked.mean()),
            f"ndcg@{k}": rank_metrics(c["rank"])[f"ndcg@{k}"],
            f"ndcg@{k}_masked": rank_metrics(c["rank_masked"])[f"ndcg@{k}"],
            "displaced_share": float((hit_masked & ~hit).mean()),
            f"ndcg@{k}_new_targets": rank_metrics(c["rank"][new])[f"ndcg@{k}"] if new.any() else float("nan"),
            "mean_places_lost": float((c["rank"] - c["rank_masked"])[hit_masked].mean())}


def run(name: str, sets: list[str], item_repr: str, seed: int) -> dict:
    from safetensors.torch import load_file

    from benchmarks.recommenders import codebook_sha
    from semid.tasks.config import load_config
    from semid.tasks.fsutil import git_sha
    from semid.tasks.recommend import recommend, split_and_model

    cfg = load_config(PARAMS, [f"data.dataset={name}", *sets, f"recommend.item_repr={item_repr}",
                               f"recommend.seed={seed}"])
    with tempfile.TemporaryDirectory() as tmp:
        out = recommend(name, cfg, out=Path(tmp) / "rec")
        split, model = split_and_model(name, cfg, cfg.recommend)
        model.load_state_dict(load_file(str(Path(tmp) / "rec" / "model.safetensors")))
    stats = history_stats(model, split, cfg.recommend.max_len)
    m = out["metrics"]  # the recommend step's own test numbers: the reloaded model must reproduce them
    for mine, theirs in (("ndcg@10", "test_full_ndcg@10"), ("ndcg@10_masked", "test_full_masked_ndcg@10")):
        if abs(stats[mine] - m[theirs]) > 1e-9:
            raise RuntimeError(f"reloaded model's {mine} {stats[mine]} != the trained one's {m[theirs]}")
    return {"dataset": name, "sets": sets, "item_repr": item_repr, "seed": seed, **stats,
            "epochs": m["epochs"], "best_epoch": m["best_epoch"],
            "codebook_sha256": codebook_sha(cfg, name) if item_repr != "id" else None, "git": git_sha(12)}


def render() -> None:
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], " ".join(r["sets"]), r["item_repr"], r["codebook_sha256"], r["cpu"]),
                          []).append(r)
    cols = [("repeat_share", "test target in history"), ("history_in_top10", "history items in top 10"),
            ("users_with_history_in_top10", "users with >= 1 in top 10"),
            ("recall@10_masked", "R@10 masked"), ("recall@10", "R@10 unmasked"),
            ("displaced_share", "hits lost to history"), ("ndcg@10_masked", "N@10 masked"),
            ("ndcg@10", "N@10 unmasked"), ("mean_places_lost", "places a masked hit loses")]
    lines = ["# Where SASRec ranks the user's own past items (test split, full ranking)", "",
             "Mean +- std over seeds. 'hits lost to history': share of test users whose target is in the top 10 with "
             "the history masked but not without. 'places a masked hit loses': mean rank drop of those masked hits "
             "when the history competes.", "",
             "Machines and dates: " + "; ".join(dict.fromkeys(f"{r['machine']} ({r['date'][:10]})" for r in records))
             + ".", "", "Commands:", ""]
    lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in records)]
    lines += ["", "| dataset | overrides | repr | seeds | " + " | ".join(h for _, h in cols) + " | codebook | git |",
              "|" + "---|" * (len(cols) + 6)]
    for (name, sets, item_repr, codebook, _), rs in groups.items():
        cells = []
        for key, _ in cols:
            a = np.array([r[key] for r in rs])
            cells.append(f"{a.mean():.4f} +- {a.std():.4f}")
        lines.append(f"| {name} | {sets or '-'} | {item_repr} | {len(rs)} | " + " | ".join(cells) +
                     f" | {codebook or '-'} | {', '.join(dict.fromkeys(r['git'] for r in rs))} |")
    write_report("history_ranks", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", nargs="?")
    ap.add_argument("--set", action="append", default=[], help="a config override key=value (repeatable)")
    ap.add_argument("--reprs", nargs="+", default=["id", "unified"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prepare_dataset(args.dataset, "validate" if set(args.reprs) == {"id"} else "quantize")
    meta = machine()
    for item_repr in args.reprs:
        for seed in args.seeds:
            r = run(args.dataset, args.set, item_repr, seed)
            r.update({"machine": machine_label(meta), "cpu": meta["cpu"], "date": machine()["date"],
                      "command": shlex.join(["python", "benchmarks/history_ranks.py", *sys.argv[1:]])})
            with RECORDS.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    render()


if __name__ == "__main__":
    main()
