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

    python benchmarks/embed_ceiling.py [--dataset amazon-scientific] [--texts 512] [--reps 5] [--rounds 3] [--threads N]

Runs the whole measurement `--rounds` times (the VM's speed drifts between minutes) and writes
benchmarks/results/embed_ceiling.{json,md} with every round, machine, CPU, date, command and git sha.
"""

from __future__ import annotations

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

from benchmarks.embed_backends import encoder_parser, paired_passes, parse  # noqa: E402
from benchmarks.prepare import PARAMS, item_texts  # noqa: E402
from benchmarks.quantizers import machine, machine_label, write_report  # noqa: E402
from semid.tasks.config import load_config  # noqa: E402
from semid.tasks.embed import load_encoder  # noqa: E402
from semid.tasks.fsutil import git_sha  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


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
        for encoder in (st, onnx):  # warm-up
            encoder.encode(texts[:batch], batch_size=batch)
        speed = paired_passes({"torch": st, "onnx": onnx}, texts, batch, reps)
        torch_s, onnx_s = ([len(texts) / x for x in speed[name]] for name in ("torch", "onnx"))
        prof = {"torch": profile_torch(st, texts, batch), "onnx": profile_onnx(onnx, texts, batch, threads)}
    tokens = batch * 64  # a full batch of 64-token texts: the model's typical product height here
    gemm = best_gemm([(tokens, 384, 384), (tokens, 384, 1536), (tokens, 1536, 384), (2048, 2048, 2048)], threads)
    best = max(gemm, key=lambda r: r["gflops"])
    flops = prof["torch"]["linear_flops"]
    t_torch, t_onnx = float(np.median(torch_s)), float(np.median(onnx_s))
    torch_ops = sum(prof["torch"]["ops"].values())  # the profiled pass's total: shares are of the same pass
    onnx_ops = sum(prof["onnx"]["ops"].values())  # profiled kernel time; its share of the unprofiled wall time:
    other_onnx = (onnx_ops - prof["onnx"]["linear_seconds"]) / onnx_ops * t_onnx  # the rest of onnxruntime's pass
    linear_best = flops / (best["gflops"] * 1e9)  # seconds of the linear layers at the fastest product rate
    return {"torch_seconds": torch_s, "onnx_seconds": onnx_s, "torch_texts_per_s": len(texts) / t_torch,
            "onnx_texts_per_s": len(texts) / t_onnx, "onnx_vs_torch": t_torch / t_onnx,
            "profiles": prof, "gemm": gemm, "best_gemm": best, "best_gflops": best["gflops"],
            "linear_gflop": flops / 1e9, "linear_share_of_torch": prof["torch"]["linear_seconds"] / torch_ops,
            "torch_linear_gflops": flops / prof["torch"]["linear_seconds"] / 1e9,
            "onnx_linear_gflops": prof["onnx"]["linear_flops"] / prof["onnx"]["linear_seconds"] / 1e9,
            "ceiling_vs_torch": t_torch / linear_best,
            "onnx_other_seconds": other_onnx, "estimate_vs_torch": t_torch / (linear_best + other_onnx),
            "gflops_needed_for_target": flops / (t_torch / target) / 1e9,
            "needed_vs_best": flops / (t_torch / target) / 1e9 / best["gflops"]}


COLUMNS = (("torch texts/s", "torch_texts_per_s", "{:.1f}"), ("onnx x torch", "onnx_vs_torch", "{:.2f}"),
           ("share of torch's profiled pass in linear layers", "linear_share_of_torch", "{:.0%}"),
           ("linear rate torch / onnx, GFLOP/s", ("torch_linear_gflops", "onnx_linear_gflops"), "{:.0f}"),
           ("fastest product, GFLOP/s", "best_gflops", "{:.0f}"),
           ("**ceiling** (everything else free)", "ceiling_vs_torch", "**{:.2f}x**"),
           ("**estimate** (other operators as onnxruntime's)", "estimate_vs_torch", "**{:.2f}x**"),
           ("rate needed for the target / fastest", "needed_vs_best", "{:.2f}"))


def cell(r: dict, key, fmt: str) -> str:
    return " / ".join(fmt.format(r[k]) for k in key) if isinstance(key, tuple) else fmt.format(r[key])


def write(common: dict, rounds: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "embed_ceiling.json").write_text(json.dumps({**common, "rounds": rounds}, indent=1) + "\n")
    c, first = common, rounds[0]
    median = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0] if isinstance(rounds[0][k], float)}
    lines = ["# The fp32 ceiling: how fast any backend can encode these texts here", "",
             f"Machine: {c['machine']}, CPU {c['cpu']}, {c['threads']} threads. Date: {c['date']}. "
             f"Git: {c['git_sha']}. Load average before: {c['load_before']}.", f"Command: `{c['command']}`", "",
             f"{c['texts']} {c['dataset']} item texts (mean {c['mean_chars']:.0f} characters), all-MiniLM-L6-v2, "
             f"batch size {c['batch_size']}, each backend's own encode (as benchmarks/embed_backends.py). Their "
             f"linear layers do {first['linear_gflop']:.1f} GFLOP a pass (from torch's addmm shapes; onnxruntime's "
             f"MatMul shapes give {first['profiles']['onnx']['linear_flops'] / 1e9:.1f}). {len(rounds)} rounds, each "
             f"the whole measurement ({c['reps']} paired passes, profiles, products); target {c['target']}x torch.", "",
             "| round | " + " | ".join(name for name, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for i, r in enumerate([*rounds, median]):
        label = "median" if i == len(rounds) else str(i + 1)
        lines.append(f"| {label} | " + " | ".join(cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |")
    lines += ["", "Ceiling: torch's time per pass over the time the linear layers take at the fastest product rate "
              "measured in the round. Estimate: the same plus the time onnxruntime spends in every other operator "
              "(its profiled share of its pass). Rate needed: what the linear layers would have to run at for the "
              "target with everything else free, over the fastest product.", "",
              "Round 1's fp32 matrix products (GFLOP/s, median of 20):", "",
              "| M x K x N | torch | onnxruntime |", "|---|---|---|"]
    for m, k, n in dict.fromkeys((g["m"], g["k"], g["n"]) for g in first["gemm"]):
        rate = {g["library"]: g["gflops"] for g in first["gemm"] if (g["m"], g["k"], g["n"]) == (m, k, n)}
        lines.append(f"| {m}x{k}x{n} | {rate['torch']:.1f} | {rate['onnxruntime']:.1f} |")
    for name in ("torch", "onnx"):
        ops = first["profiles"][name]["ops"]
        total = sum(ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
        lines += ["", f"Round 1's profiled {name} pass, time per operator (top 6 of {total:.2f} s): "
                  + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in top) + "."]
    write_report("embed_ceiling", lines)


def main() -> None:
    ap = encoder_parser()
    ap.add_argument("--rounds", type=int, default=3, help="whole measurements (this VM's speed drifts by minutes)")
    ap.add_argument("--target", type=float, default=1.7, help="the speed-up over torch asked for (issue 14)")
    args = parse(ap)
    base, texts = load_config(PARAMS), item_texts(args.dataset, args.texts)
    meta, load_before = machine(), [round(x, 2) for x in os.getloadavg()]
    rounds = []
    for i in range(args.rounds):
        r = measure(texts, base.embed.batch_size, args.reps, torch.get_num_threads(), args.target)
        rounds.append(r)
        print(f"round {i + 1}: torch {r['torch_texts_per_s']:.1f} texts/s, onnx x{r['onnx_vs_torch']:.2f}; linear "
              f"{r['linear_share_of_torch']:.0%} of torch's time at {r['torch_linear_gflops']:.0f} GFLOP/s (onnx "
              f"{r['onnx_linear_gflops']:.0f}); best product {r['best_gflops']:.0f}; ceiling "
              f"{r['ceiling_vs_torch']:.2f}x, estimate {r['estimate_vs_torch']:.2f}x", flush=True)
    common = {"dataset": args.dataset, "texts": len(texts), "mean_chars": float(np.mean([len(t) for t in texts])),
              "batch_size": base.embed.batch_size, "threads": torch.get_num_threads(), "reps": args.reps,
              "target": args.target, "command": shlex.join(["python", "benchmarks/embed_ceiling.py", *sys.argv[1:]]),
              "git_sha": git_sha(12), "date": meta["date"], "machine": machine_label(meta), "cpu": meta["cpu"],
              "load_before": load_before}
    write(common, rounds)
    print(f"wrote {OUT / 'embed_ceiling.json'} and embed_ceiling.md")


if __name__ == "__main__":
    main()
