"""Diagnostics against values computed by hand, plus the K_eff bound chain as a property."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from semid.models import diagnostics as d
from semid.models.collisions import dedup_level, duplicate_rate, reassign, resolve


def test_uniform_well_separated_codebook_has_k_eff_k():
    k = 8
    codebook = np.eye(k) * 100.0  # far apart relative to sigma
    codes = np.repeat(np.arange(k), 5)
    rep = d.level_report(codes, codebook, "euclidean", rho=0.05, samples=32)
    assert rep["active_share"] == 1.0
    assert math.isclose(rep["perplexity"], k)
    assert math.isclose(rep["inverse_simpson"], k)
    assert math.isclose(rep["k_eff"], k, rel_tol=1e-9)
    assert math.isclose(rep["k_eff_gaussian"], k, rel_tol=1e-6)
    assert rep["gini"] == 0.0


def test_all_items_on_one_code():
    codebook = np.random.default_rng(0).normal(size=(4, 3))
    codes = np.zeros((6, 2), dtype=int)
    rep = d.level_report(codes[:, 0], codebook, "euclidean")
    assert rep["k_eff"] == 1.0 and rep["active"] == 1 and rep["perplexity"] == 1.0
    ids = d.id_report(codes)
    # 6 items, 1 distinct ID: duplicate rate = 1 - 1/6, nobody unique, 6 items on that ID
    assert math.isclose(ids["duplicate_rate"], 5 / 6)
    assert ids["unique_coverage"] == 0.0 and ids["max_items_per_id"] == 6


def test_duplicate_rate_and_unique_coverage_by_hand():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1], [1, 1], [1, 1], [2, 0]])
    ids = d.id_report(codes)
    # distinct IDs: (0,1) (0,2) (1,1) (2,0) = 4 of 7 items; unique items: (0,2) and (2,0) = 2 of 7
    assert math.isclose(ids["duplicate_rate"], 1 - 4 / 7)
    assert math.isclose(ids["unique_coverage"], 2 / 7)
    assert ids["max_items_per_id"] == 3


def test_gini_and_entropy_small_example():
    # usage counts [0, 0, 1, 3]: mean 1, sum_ij |xi - xj| = 2*(0+1+3+1+3+2) = 20 -> G = 20 / (2 * 16 * 1) = 0.625
    assert math.isclose(d.gini(np.array([3, 0, 1, 0])), 0.625)
    pi = np.array([0.5, 0.25, 0.25, 0.0])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert math.isclose(d.entropy(pi), h)
    assert math.isclose(d.perplexity(pi), math.exp(h))
    assert math.isclose(d.inverse_simpson(pi), 1 / (0.25 + 0.0625 + 0.0625))


def test_close_codewords_reduce_k_eff_by_hand():
    # codewords 0 and 1 are delta apart, 2 is far away; pi uniform over 3.
    # median nearest-codeword distance = delta -> sigma = 0.5 * delta.
    # Gaussian kernel: kappa(0,1) = exp(-delta^2 / (8 sigma^2)) = exp(-1/2)
    # Monte-Carlo: P(0->1) = P(noise_x > delta/2) = Phi(-1) = 0.158655...
    delta = 0.001
    codebook = np.array([[0.0, 0.0], [delta, 0.0], [50.0, 50.0]])
    codes = np.array([0, 1, 2] * 10)
    rep = d.level_report(codes, codebook, "euclidean", rho=0.5, samples=4000, seed=1)
    assert math.isclose(rep["sigma"], delta / 2)
    assert math.isclose(rep["k_eff_gaussian"], 9 / (3 + 2 * math.exp(-0.5)), rel_tol=1e-9)
    phi = 0.5 * math.erfc(1 / math.sqrt(2))
    assert math.isclose(rep["k_eff"], 9 / (3 + 2 * phi), rel_tol=0.02)
    assert rep["k_eff"] < rep["inverse_simpson"] == 3.0


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=2, max_size=12).filter(lambda c: sum(c) > 0),
    seed=st.integers(0, 10_000),
    rho=st.floats(0.05, 2.0),
)
def test_k_eff_bound_chain(counts, seed, rho):
    k = len(counts)
    codebook = np.random.default_rng(seed).normal(size=(k, 4))
    codes = np.repeat(np.arange(k), counts)
    rep = d.level_report(codes, codebook, "euclidean", rho=rho, samples=16, seed=seed)
    eps = 1e-9
    assert rep["k_eff"] <= rep["inverse_simpson"] + eps
    assert rep["k_eff_gaussian"] <= rep["inverse_simpson"] + eps
    assert rep["inverse_simpson"] <= rep["perplexity"] + eps
    assert rep["perplexity"] <= rep["active"] + eps
    assert rep["active"] <= k


def test_dedup_level_and_reassign_make_ids_unique():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 2]])
    ded = dedup_level(codes)
    assert ded[:, -1].tolist() == [0, 1, 2, 0, 0] and duplicate_rate(ded) == 0.0
    # last-level costs: 3 codes; item 1 prefers code 2, item 2 prefers code 0, item 0 keeps code 1
    cost = np.array([[5, 0, 5], [4, 1, 2], [1, 2, 9], [0, 1, 1], [1, 1, 0]], dtype=float)
    new, moved = reassign(codes, cost)
    assert new[:, 1].tolist() == [1, 2, 0, 0, 2] and moved == 2
    assert duplicate_rate(new) == 0.0


def test_reassign_falls_back_when_prefix_overfull():
    codes = np.zeros((5, 2), dtype=int)  # 5 items, only 3 last-level codes
    ids, info = resolve(codes, "reassign", np.zeros((5, 3)))
    assert info["fallback_dedup"] and duplicate_rate(ids) == 0.0


def test_extend_ids_keeps_known_ids_and_places_new_items():
    from semid.models.collisions import duplicate_rate, extend_ids

    codes = np.array([[0, 1], [0, 2], [0, 1], [1, 0]])  # item 2 (new) lands on item 0's ID
    known = np.array([[0, 1], [0, 2], [0, 0], [0, 0]])
    fixed = np.array([True, True, False, False])
    cost = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [5.0, 0.0, 1.0, 0.5], [0.0, 1, 1, 1]])
    ids, info = extend_ids(codes, known, fixed, cost, "reassign")
    assert ids[:2].tolist() == [[0, 1], [0, 2]]  # known items untouched
    assert ids[2].tolist() == [0, 3] and ids[3].tolist() == [1, 0]  # cheapest free code in its prefix
    assert duplicate_rate(ids) == 0 and info["moved"] == 1
    # known IDs with a counter level: a colliding new item gets the next free counter of its prefix
    known3 = np.array([[0, 1, 0], [0, 2, 0], [0, 0, 0], [0, 0, 0]])
    ids3, _ = extend_ids(codes, known3, fixed, cost, "dedup_level")
    assert ids3.tolist() == [[0, 1, 0], [0, 2, 0], [0, 1, 1], [1, 0, 0]]
