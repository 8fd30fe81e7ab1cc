"""The recommender benchmark's record bookkeeping: merging part files and the provenance header."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.quantizers import machine
from benchmarks.recipe import group_key, parse_variant
from benchmarks.recommenders import combine, provenance, record_key, stamp
from semid.tasks.fsutil import git_sha


def _rec(model="mmoe", seed=0, variant=None, auc=0.5, **extra):
    return {"dataset": "ml-100k", "model": model, "variant": variant, "item_repr": None, "protocol": "auc",
            "seed": seed, "auc_interact": auc, **extra}


def test_combine_replaces_namesakes_and_keeps_variants_apart(tmp_path):
    old = [_rec(seed=0, auc=0.1), _rec(seed=1, auc=0.2), _rec(model="dtn", auc=0.3)]
    part = tmp_path / "part.json"
    part.write_text(json.dumps([_rec(seed=0, auc=0.9), _rec(seed=0, variant="8 experts x 76", auc=0.7)]))
    merged = {record_key(r): r["auc_interact"] for r in combine(old, [part])}
    assert merged == {record_key(_rec(seed=0)): 0.9, record_key(_rec(seed=1)): 0.2,
                      record_key(_rec(model="dtn")): 0.3, record_key(_rec(variant="8 experts x 76")): 0.7}


def test_provenance_lists_each_records_command_once():
    rows = [_rec(command="python benchmarks/recommenders.py --rankers dtn", date="2026-11-25T07:00:00+00:00",
                 machine="box", torch_threads=1),
            _rec(seed=1, command="python benchmarks/recommenders.py --rankers dtn", date="2026-11-24T07:00:00+00:00",
                 machine="box", torch_threads=1)]
    lines = provenance(rows, "3.11.7")
    assert lines[0].startswith("Machine: box, Python 3.11.7. Measured on 2026-11-24, 2026-11-25")
    assert lines[0].endswith("torch threads per model: 1.")
    assert lines[2:] == ["- `python benchmarks/recommenders.py --rankers dtn`"]
    assert provenance([_rec(date="2026-11-24T07:00:00+00:00", machine="box")], "3.11.7")[2:] == ["- none recorded"]


def test_stamp_records_where_when_and_how():
    fresh = _rec(seed=1)
    assert stamp([fresh]) == [fresh]
    assert fresh["command"].startswith("python benchmarks/recommenders.py") and fresh["torch_threads"] >= 1
    assert fresh["date"][:4].isdigit() and "CPUs" in fresh["machine"]


WRK = """Running 10s test @ http://127.0.0.1:5077/invocations
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.10ms   12.31ms 120.00ms   70.00%
  Latency Distribution
     50%   51.70ms
     75%   60.02ms
     90%  700.00us
     99%    1.20s
  1523 requests in 10.00s, 1.02MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    152.30
Transfer/sec:    104.41KB
"""


def test_wrk_output_is_parsed_with_units():
    from benchmarks.serving import parse_wrk

    r = parse_wrk(WRK)
    assert r["requests"] == 1523 and r["requests_per_s"] == 152.3 and r["non_2xx"] == 3
    assert [r[f"p{k}_ms"] for k in (50, 75, 90, 99)] == pytest.approx([51.7, 60.02, 0.7, 1200.0])


def test_recipe_variant_keeps_a_list_value_whole():
    assert parse_variant("default") == ("default", [])
    assert parse_variant("d02:recommend.dropout=0.2,recommend.epochs=200") == (
        "d02", ["recommend.dropout=0.2", "recommend.epochs=200"])
    assert parse_variant("b98:recommend.betas=[0.9,0.98],recommend.lr=0.001") == (
        "b98", ["recommend.betas=[0.9,0.98]", "recommend.lr=0.001"])


def test_recipe_rows_average_seeds_only_on_one_codebook_and_cpu():
    base = {"dataset": "amazon-scientific", "variant": "default", "item_repr": "unified"}
    here = {**base, "codebook_sha256": "0f3824e27504", "cpu": "AMD EPYC"}
    assert group_key({**here, "seed": 0}) == group_key({**here, "seed": 1})
    assert group_key(here) != group_key({**here, "codebook_sha256": "1c7ffbf0f513"})
    assert group_key(here) != group_key({**here, "cpu": "Intel Xeon"})
    older = {**base, "codebook_sha256": "0f3824e27504"}  # written before records named their CPU
    assert group_key(older)[-1] == "not recorded" and group_key(older) != group_key(here)
    assert machine()["cpu"]


def test_reference_run_provenance_names_the_script_its_arguments_and_this_commit(monkeypatch):
    import subprocess
    from pathlib import Path

    from benchmarks.hostinfo import cpu_model
    from benchmarks.hostinfo import provenance as reference_provenance

    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout: the record's sha is 'unknown' by design")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                           text=True).stdout.strip()
    monkeypatch.setattr("sys.argv", ["x.py", "data/processed/amazon-beauty", "out dir/o.json", "--epochs", "3"])
    p = reference_provenance("benchmarks/rectools_sasrec.py")
    assert p["command"] == ("python benchmarks/rectools_sasrec.py data/processed/amazon-beauty 'out dir/o.json' "
                            "--epochs 3")
    assert p["git"] == head[:12] + ("-dirty" if dirty else "")
    assert p["machine"].endswith(cpu_model())


def test_git_sha_keeps_the_dirty_mark_when_shortened(tmp_path):
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir(), plain.mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (repo / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_sha(cwd=repo) == head and git_sha(12, cwd=repo) == head[:12]
    (repo / "new.txt").write_text("untracked\n")  # untracked files leave the checkout clean
    assert git_sha(12, cwd=repo) == head[:12]
    (repo / "f.txt").write_text("b\n")
    assert git_sha(12, cwd=repo) == head[:12] + "-dirty"
    assert git_sha(cwd=repo) == head + "-dirty"
    assert git_sha(12, cwd=plain) == "unknown"  # not a git checkout


def test_reference_provenance_runs_on_the_standard_library_alone():
    """The RecBole / RecTools venvs have neither semid nor its dependencies: hostinfo and the git helper it loads
    from the checkout (tasks/fsutil.py) must work with no site-packages at all (python -S -I)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.hostinfo import provenance; "
            "p = provenance('benchmarks/recbole_sasrec.py'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('semid', 'numpy', 'torch', 'mlflow')); "
            "print(p['git'], bad)")
    out = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sha, loaded = out.stdout.strip().split(" ", 1)
    assert loaded == "[]"
    assert sha == "unknown" or len(sha.removesuffix("-dirty")) == 12
