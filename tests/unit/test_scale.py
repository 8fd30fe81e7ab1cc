"""The scale benchmark's pure helpers: the log-log slope and the process-tree memory sampler."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest

from benchmarks.scale import add_slopes, measure, record_key, slope, status_kb, tree_pids

# A parent that starts a child: the child holds a 200 MB numpy array (touched, so it is resident), the parent only
# waits. The sampler must see the child's memory through the tree, not just the process it started.
CHILD = "import numpy as np, time; a = np.ones(200 * 2**20 // 8); time.sleep(1.5)"
PARENT = textwrap.dedent(f"""
    import subprocess, sys
    subprocess.run([sys.executable, "-c", {CHILD!r}], check=True)
""")


def test_slope_is_the_exponent_of_a_power_law():
    assert slope(10_000, 2.0, 100_000, 20.0) == pytest.approx(1.0)
    assert slope(10_000, 1.0, 100_000, 100.0) == pytest.approx(2.0)
    assert slope(1_000, 5.0, 8_000, 5.0) == pytest.approx(0.0)
    assert slope(12_101, 3.0, 100_000, 12.0) == pytest.approx(math.log(4) / math.log(100_000 / 12_101))
    assert slope(10, 1.0, 10, 2.0) is None  # same size: undefined
    assert slope(10, 0.0, 100, 2.0) is None  # zero time: undefined


def test_slopes_pair_sizes_measured_on_the_same_cpu_only():
    def rec(size, items, wall, cpu=None, kernels=None):
        r = {"size": size, "items": items, "stage": "embed", "task_runner": None, "backend": "onnx-int8",
             "overrides": [], "wall_s": wall, "cpu_s": wall, "peak_anon_mb": 100.0}
        return {**r, "cpu": cpu, "int8_kernels": kernels} if cpu else r  # old records carry no CPU

    old = [rec("10k", 10_000, 10.0), rec("100k", 100_000, 100.0)]
    vnni = [rec("100k", 100_000, 50.0, "EPYC", "avx512vnni"), rec("1m", 1_000_000, 500.0, "EPYC", "avx512vnni")]
    avx2_1m = rec("1m", 1_000_000, 2000.0, "EPYC", "avx2")
    rows = add_slopes([*old, *vnni, avx2_1m])
    pairs = {(r["from"], r["to"], r["int8_kernels"]): r["wall_slope"] for r in rows}
    assert pairs == {("10k", "100k", None): pytest.approx(1.0), ("100k", "1m", "avx512vnni"): pytest.approx(1.0)}


def test_a_rerun_replaces_its_namesake_on_the_same_cpu_only():
    r = {"size": "1m", "stage": "embed", "task_runner": None, "backend": "onnx-int8",
         "overrides": ["data.engine=duckdb"]}
    vnni = {**r, "cpu": "EPYC", "int8_kernels": "avx512vnni"}
    assert record_key(vnni) == record_key({**vnni, "wall_s": 1.0})
    assert record_key(vnni) != record_key(r)  # an old record without a CPU is kept beside a new one
    assert record_key(vnni) != record_key({**vnni, "int8_kernels": "avx2"})


def test_sampler_sees_anonymous_memory_of_a_grandchild():
    m = measure([sys.executable, "-c", PARENT], interval=0.1)
    assert m["rc"] == 0
    assert m["processes"] >= 2
    assert m["peak_anon_mb"] >= 180, m
    assert m["peak_anon_mb"] < 600, m  # not double counted into nonsense
    assert m["cpu_s"] > 0 and m["wall_s"] >= 1.5


def test_sampler_does_not_count_a_memory_mapped_file_as_anonymous(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"\1" * (200 * 2**20))
    code = (f"import mmap, time; fh = open({str(f)!r}, 'rb'); m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ); "
            "s = sum(m[i] for i in range(0, len(m), 4096)); time.sleep(1.0)")
    m = measure([sys.executable, "-c", code], interval=0.1)
    assert m["rc"] == 0
    assert m["peak_anon_mb"] < 100, m
    assert m["hwm_sum_mb"] >= 180, m  # VmHWM does count the mapped pages


def test_tree_and_status_of_this_process():
    import os

    assert tree_pids(os.getpid())[0] == os.getpid()
    assert status_kb(os.getpid())["RssAnon"] > 0
    assert status_kb(2**22 + 12345) == {}
