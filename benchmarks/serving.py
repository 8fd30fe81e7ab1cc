"""Serving benchmark: `semid serve` (MLflow's scoring server) on a dataset's champion recommender under a bounded
wrk load on loopback: requests/s and p50/p90/p99 latency at a fixed concurrency. One request is one real user
history (the test split's inputs, last `max_len` items, source ids) with k = 10; bodies cycle through 500 users.

    python benchmarks/serving.py [--datasets ml-100k amazon-beauty] [--connections 8] [--seconds 30]

Sets itself up: a dataset without a champion gets one from `semid run --set data.dataset=NAME`. Needs `wrk`
(Debian: apt-get install wrk). Writes benchmarks/results/serving.{json,md} with machine, date, command, git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prepare import PARAMS  # noqa: E402
from benchmarks.quantizers import machine, machine_label  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
LUA = """
local bodies = {}
for line in io.lines(os.getenv("SEMID_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/invocations", {["Content-Type"] = "application/json"}, bodies[(i % #bodies) + 1])
end
"""


def champion(name: str):
    from semid.tasks.config import load_config
    from semid.tasks.tracking import champion_version, client_for, model_name

    cfg = load_config(PARAMS, [f"data.dataset={name}"])
    client, _ = client_for(cfg)
    return cfg, champion_version(client, model_name(cfg, "recommender", name))


def bodies(cfg, name: str, users: int = 500) -> list[str]:
    """One JSON body per user: the test split's input history (source ids), k = 10."""
    from semid.models.seqrec import Split, sequences
    from semid.tasks import layout

    tables = layout.load_processed(cfg, name)
    source = tables["items"].sort_values("item_id")["source_id"].astype(str).tolist()
    split = Split(sequences(tables["interactions"]), len(source), cfg.recommend.negatives, 0)
    out = []
    for seq in split.eval_inputs["test"][:users]:
        history = [source[i] for i in seq[-cfg.recommend.max_len:]]
        out.append(json.dumps({"dataframe_records": [{"history": history, "k": 10}]}))
    return out


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: .*", text)
    return {"requests": total, "requests_per_s": rps, **{f"p{k}_ms": ms(v) for k, v in pct.items()},
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else None}


def measure(name: str, connections: int, seconds: int, workers: int, port: int = 5077) -> dict:
    cfg, mv = champion(name)
    if mv is None:  # set up: train and promote a champion for this dataset
        subprocess.run([str(BIN / "semid"), "run", "--set", f"data.dataset={name}"], check=True)
        cfg, mv = champion(name)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "bodies.txt").write_text("\n".join(bodies(cfg, name)) + "\n")
    (tmp / "post.lua").write_text(LUA)
    server = subprocess.Popen([str(BIN / "semid"), "serve", name, "--port", str(port), "--workers", str(workers)],
                              stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              start_new_session=True)
    try:
        for _ in range(180):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise RuntimeError((tmp / "serve.log").read_text()[-3000:])
        env = {**os.environ, "SEMID_BODIES": str(tmp / "bodies.txt")}
        wrk = ["wrk", "-t", "2", "-c", str(connections), "--latency", "-s", str(tmp / "post.lua"),
               f"http://127.0.0.1:{port}/invocations"]
        subprocess.run([*wrk[:1], "-d", "5s", *wrk[1:]], env=env, capture_output=True, check=True)  # warm-up
        out = subprocess.run([*wrk[:1], "-d", f"{seconds}s", *wrk[1:]], env=env, capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"dataset": name, "model_version": str(mv.version), "connections": connections, "seconds": seconds,
            "workers": workers, **parse_wrk(out), "wrk": out}


def write(records: list[dict], meta: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = ["# Serving benchmark", "",
             f"Machine: {machine_label(meta)}. Date: {meta['date']}. "
             f"Git: {records[0]['git_sha']}.", f"Command: `{records[0]['command']}`", "",
             "`semid serve DATASET` (MLflow scoring server, uvicorn) on the champion recommender, wrk on loopback "
             "(2 threads); one request = one real test-split history, k = 10. Target: p99 <= 100 ms at concurrency 8.",
             "", "| dataset | champion | workers | connections | requests/s | p50 ms | p90 ms | p99 ms | non-2xx |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['dataset']} | v{r['model_version']} | {r['workers']} | {r['connections']} | "
                     f"{r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['non_2xx']} |")
    (OUT / "serving.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "amazon-beauty"])
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    from semid.tasks.fsutil import git_sha

    meta, command = machine(), shlex.join(["python", "benchmarks/serving.py", *sys.argv[1:]])
    records = []
    for name in args.datasets:
        records.append({**measure(name, args.connections, args.seconds, args.workers), "command": command,
                        "git_sha": git_sha(), "date": meta["date"]})
        r = records[-1]
        print(f"{name}: {r['requests_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"non-2xx {r['non_2xx']}", flush=True)
        write(records, meta)


if __name__ == "__main__":
    main()
