"""How fast can any fp32 backend encode item texts on this CPU? The ceiling that the transformer's matrix products set,
against torch's measured speed and the onnxruntime fp32 backend's.

MiniLM spends most of its time in its linear layers (Q, K, V, output and the two feed-forward matrices of each of
6 layers). Their floating-point work is fixed by the batches' shapes, whatever runs them, so no fp32 backend that
computes the same batches can take less time than that work divided by the fastest fp32 matrix product this machine
does. This benchmark measures the parts of that bound on the same texts, batches and threads as
benchmarks/embed_backends.py (each encoder's own encode, bare):

1. wall time per pass of the torch (sentence-transformers) and onnx (fp32) backends: median of `--reps`, in pairs;
2. one profiled pass of each (torch.profiler; onnxruntime's session profiling): time per operator, and the linear
   layers' FLOPs from the shapes each library recorded (2 x M x K x N per product: torch's addmm, onnxruntime's
   MatMul / Gemm whose second input is a weight), so each library's rate on the model's own products;
3. the fastest fp32 matrix product either library reaches here, on the model's product shapes and a 2048^3 one
   (median of 20 runs after 3 warm-ups, the same threads);
4. the ceiling: torch's time per pass / (linear FLOPs / that fastest rate), i.e. the speed-up over torch of a backend
   whose linear layers ran at the machine's best rate and whose every other operator (attention, GELU, layer norm,
   tokenizing, pooling) took no time at all; the same with every other operator as long as onnxruntime takes for it
   (its profiled share of the pass, times the backend's wall time: an estimate, not a bound); and the rate the linear
   layers would need for `--target` x torch.

    python benchmarks/embed_ceiling.py [--dataset amazon-scientific] [--texts 512] [--reps 5] [--threads N]

Writes benchmarks/results/embed_ceiling.{json,md} with machine, CPU, date, command and git sha.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS, prepare_dataset  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.embed import load_encoder  # noqa: E402
from semid.tasks.layout import load_processed  # noqa: E402
from semid.tasks.tracking import git_sha  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def wall(encoders: dict, texts: list[str], batch: int, reps: int) -> dict[str, list[float]]:
    """Seconds per pass over the texts for each encoder, `reps` passes each after a warm-up, the encoders back to
    back in alternating order (the VM's speed drifts between minutes; pairs see the same drift)."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode(texts[:batch], batch_size=batch)
    for rep in range(reps):
        for name in (list(encoders) if rep % 2 == 0 else list(encoders)[::-1]):
            t0 = time.perf_counter()
            encoders[name].encode(texts, batch_size=batch, show_progress_bar=False)
            times[name].append(time.perf_counter() - t0)
    return times


def profile_torch(st, texts: list[str], batch: int) -> dict:
    """Self time per aten operator over one pass, and the linear layers' (addmm) FLOPs from their recorded shapes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        st.encode(texts, batch_size=batch, show_progress_bar=False)
    ops: collections.Counter = collections.Counter()
    flops = 0
    for event in prof.key_averages(group_by_input_shape=True):
        ops[event.key] += event.self_cpu_time_total / 1e6
        if event.key == "aten::addmm":  # bias [N], input [M, K], weight^T [K, N]
            _, (m, k), (_, n) = event.input_shapes[:3]
            flops += 2 * m * k * n * event.count
    return {"ops": dict(ops), "linear_flops": flops, "linear_seconds": ops["aten::addmm"]}


def profile_onnx(encoder, texts: list[str], batch: int, threads: int) -> dict:
    """Kernel time per onnxruntime operator type over one pass of a profiling copy of the fp32 session, and the
    linear layers' FLOPs (MatMul / Gemm nodes whose second input is a weight: M x K in, M x N out)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the backend sets it
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="semid-ortprof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = encoder.session
        encoder.session = ort.InferenceSession(session._model_path, options, providers=["CPUExecutionProvider"])
        try:
            encoder.encode(texts, batch_size=batch)
            events = json.loads(Path(encoder.session.end_profiling()).read_text())
        finally:
            encoder.session = session
    ops: collections.Counter = collections.Counter()
    flops, linear_s = 0, 0.0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, seconds = e["args"]["op_name"], e["dur"] / 1e6
        ops[op] += seconds
        shapes = [next(iter(s.values())) for s in e["args"].get("input_type_shape", [])]
        out = [next(iter(s.values())) for s in e["args"].get("output_type_shape", [])]
        # a linear layer: its weight is an initializer, pre-packed and not listed (or listed 2-d)
        if op in ("MatMul", "Gemm") and out and (len(shapes) == 1 or len(shapes[1]) == 2):
            flops += 2 * int(np.prod(shapes[0])) * out[0][-1]
            linear_s += seconds
    return {"ops": dict(ops), "linear_flops": flops, "linear_seconds": linear_s}


def best_gemm(shapes: list[tuple[int, int, int]], threads: int) -> list[dict]:
    """GFLOP/s of an fp32 [M, K] x [K, N] product in torch and in onnxruntime (a one-node MatMul graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
                                  [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k]),
                                   helper.make_tensor_value_info("B", TensorProto.FLOAT, [k, n])],
                                  [helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        onnx.checker.check_model(model)
        for library, seconds in (("torch", _median_seconds(torch.mm, ta, tb)),
                                 ("onnxruntime", _median_seconds(session.run, None, {"A": a, "B": b}))):
            rows.append({"library": library, "m": m, "k": k, "n": n, "gflops": 2 * m * k * n / seconds / 1e9})
    return rows


def _median_seconds(run, *args) -> float:
    """Median seconds of 20 calls of run(*args) after 3 warm-up calls."""
    for _ in range(3):
        run(*args)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(texts: list[str], batch: int, reps: int, threads: int, target: float) -> dict:
    st = load_encoder("all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory(prefix="semid-onnx-") as onnx_dir:
        onnx = load_encoder("all-MiniLM-L6-v2", "onnx", onnx_dir, threads)
        seconds = wall({"torch": st, "onnx": onnx}, texts, batch, reps)
        torch_s, onnx_s = seconds["torch"], seconds["onnx"]
        prof = {"torch": profile_torch(st, texts, batch), "onnx": profile_onnx(onnx, texts, batch, threads)}
    tokens = batch * 64  # a full batch of 64-token texts: the model's typical product height here
    gemm = best_gemm([(tokens, 384, 384), (tokens, 384, 1536), (tokens, 1536, 384), (2048, 2048, 2048)], threads)
    best = max(gemm, key=lambda r: r["gflops"])
    flops = prof["torch"]["linear_flops"]
    t_torch, t_onnx = float(np.median(torch_s)), float(np.median(onnx_s))
    onnx_ops = sum(prof["onnx"]["ops"].values())  # profiled kernel time; its share of the unprofiled wall time:
    other_onnx = (onnx_ops - prof["onnx"]["linear_seconds"]) / onnx_ops * t_onnx  # the rest of onnxruntime's pass
    linear_best = flops / (best["gflops"] * 1e9)  # seconds of the linear layers at the fastest product rate
    return {"texts": len(texts), "batch_size": batch, "threads": threads, "reps": reps,
            "torch_seconds": torch_s, "onnx_seconds": onnx_s, "torch_texts_per_s": len(texts) / t_torch,
            "onnx_texts_per_s": len(texts) / t_onnx, "onnx_vs_torch": t_torch / t_onnx,
            "profiles": prof, "gemm": gemm, "best_gemm": best,
            "linear_gflop": flops / 1e9, "linear_share_of_torch": prof["torch"]["linear_seconds"] / t_torch,
            "torch_linear_gflops": flops / prof["torch"]["linear_seconds"] / 1e9,
            "onnx_linear_gflops": prof["onnx"]["linear_flops"] / prof["onnx"]["linear_seconds"] / 1e9,
            "ceiling_vs_torch": t_torch / linear_best, "target": target,
            "onnx_other_seconds": other_onnx, "estimate_vs_torch": t_torch / (linear_best + other_onnx),
            "gflops_needed_for_target": flops / (t_torch / target) / 1e9}


def write(r: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "embed_ceiling.json").write_text(json.dumps(r, indent=1) + "\n")
    best = r["best_gemm"]
    lines = ["# The fp32 ceiling: how fast any backend can encode these texts here", "",
             f"Machine: {r['machine']}, CPU {r['cpu']}, {r['threads']} threads. Date: {r['date']}. "
             f"Git: {r['git_sha']}. Load average before: {r['load_before']}.", f"Command: `{r['command']}`", "",
             f"{r['texts']} {r['dataset']} item texts (mean {r['mean_chars']:.0f} characters), all-MiniLM-L6-v2, "
             f"batch size {r['batch_size']}, each backend's own encode (as benchmarks/embed_backends.py).", "",
             "| quantity | value |", "|---|---|",
             f"| torch backend | {r['torch_texts_per_s']:.1f} texts/s (median of {r['reps']}) |",
             f"| onnx fp32 backend | {r['onnx_texts_per_s']:.1f} texts/s, {r['onnx_vs_torch']:.2f}x torch |",
             f"| linear layers' work (from torch's addmm shapes; onnxruntime's MatMul shapes give "
             f"{r['profiles']['onnx']['linear_flops'] / 1e9:.1f}) | {r['linear_gflop']:.1f} GFLOP a pass |",
             f"| share of torch's time in them (profiled pass) | {r['linear_share_of_torch']:.0%} |",
             f"| their rate in torch / in onnxruntime (profiled passes) | {r['torch_linear_gflops']:.1f} / "
             f"{r['onnx_linear_gflops']:.1f} GFLOP/s |",
             f"| fastest fp32 product here (either library, shapes below) | {best['gflops']:.1f} GFLOP/s "
             f"({best['library']}, {best['m']}x{best['k']}x{best['n']}) |",
             "| **ceiling**: linear layers at that rate, everything else free "
             f"| **{r['ceiling_vs_torch']:.2f}x torch** |",
             "| **estimate**: linear layers at that rate, every other operator as onnxruntime runs it "
             f"({r['onnx_other_seconds']:.2f} s a pass) | **{r['estimate_vs_torch']:.2f}x torch** |",
             f"| rate the linear layers would need for {r['target']}x torch, with everything else free "
             f"| {r['gflops_needed_for_target']:.1f} GFLOP/s ({r['gflops_needed_for_target'] / best['gflops']:.2f}x "
             "the fastest product) |", "",
             "fp32 matrix products (GFLOP/s, median of 20):", "",
             "| M x K x N | torch | onnxruntime |", "|---|---|---|"]
    for m, k, n in dict.fromkeys((g["m"], g["k"], g["n"]) for g in r["gemm"]):
        rate = {g["library"]: g["gflops"] for g in r["gemm"] if (g["m"], g["k"], g["n"]) == (m, k, n)}
        lines.append(f"| {m}x{k}x{n} | {rate['torch']:.1f} | {rate['onnxruntime']:.1f} |")
    for name in ("torch", "onnx"):
        ops = r["profiles"][name]["ops"]
        total = sum(ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
        lines += ["", f"Profiled {name} pass, time per operator (top 6 of {total:.2f} s): "
                  + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in top) + "."]
    write_report("embed_ceiling", lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="amazon-scientific")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--target", type=float, default=1.7, help="the speed-up over torch asked for (issue 14)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(PARAMS)
    prepare_dataset(args.dataset, "validate")
    texts = load_processed(base, args.dataset)["items"].sort_values("item_id")["text"].fillna("").astype(str)
    texts = texts.tolist()[: args.texts]
    meta, load_before = machine(), [round(x, 2) for x in os.getloadavg()]
    r = measure(texts, base.embed.batch_size, args.reps, torch.get_num_threads(), args.target)
    r.update({"dataset": args.dataset, "mean_chars": float(np.mean([len(t) for t in texts])),
              "command": shlex.join(["python", "benchmarks/embed_ceiling.py", *sys.argv[1:]]), "git_sha": git_sha(12),
              "date": meta["date"], "machine": machine_label(meta), "cpu": meta["cpu"], "load_before": load_before})
    print(f"torch {r['torch_texts_per_s']:.1f} texts/s, onnx {r['onnx_texts_per_s']:.1f} ({r['onnx_vs_torch']:.2f}x); "
          f"linear {r['linear_gflop']:.0f} GFLOP, {r['linear_share_of_torch']:.0%} of torch's time at "
          f"{r['torch_linear_gflops']:.0f} GFLOP/s (onnx {r['onnx_linear_gflops']:.0f}); best product "
          f"{r['best_gemm']['gflops']:.0f} GFLOP/s; ceiling {r['ceiling_vs_torch']:.2f}x torch; {args.target}x needs "
          f"{r['gflops_needed_for_target']:.0f} GFLOP/s")
    write(r)
    print(f"wrote {OUT / 'embed_ceiling.json'} and embed_ceiling.md")


if __name__ == "__main__":
    main()
