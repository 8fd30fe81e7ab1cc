"""SASRec and the multi-task rankers: behaviour on small synthetic data (causality, learning, determinism,
item representations, stop-gradient of the task-sensitive branch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semid.models.dtn import DTN, FieldEmbedding, build_ranker, multitask_loss
from semid.models.params import QuantizerParams, RankerParams, RecommendParams
from semid.models.ranking import RankData, make_ranker, task_aucs, train_ranker
from semid.models.sasrec import ItemTable, SASRec, position_index
from semid.models.seqrec import Split, build_recommender, evaluate, train


def _cycle_sequences(n_users=120, n_items=30, length=12, seed=0):
    """Every user walks the catalogue in order from a random start: the next item is fully predictable."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(n_items) + np.arange(length)) % n_items for _ in range(n_users)]


@pytest.mark.parametrize("block", ["pre_ln", "post_ln", "sasrec"])
def test_sasrec_is_causal(block):
    torch.manual_seed(0)
    model = SASRec(ItemTable(20, "id", id_dim=16), max_len=8, layers=2, heads=2, dropout=0.0, block=block).eval()
    table, _ = model.items()
    a = torch.tensor([[3, 4, 5, 6, 0, 0]])
    b = torch.tensor([[3, 4, 5, 9, 7, 0]])
    ha, hb = model.encode(a, table), model.encode(b, table)
    assert torch.allclose(ha[:, :3], hb[:, :3], atol=1e-6)  # positions before the change are unaffected
    assert not torch.allclose(ha[:, 3], hb[:, 3])


def test_backward_positions_count_from_the_last_item():
    seq = torch.tensor([[3, 4, 5, 0], [7, 8, 0, 0]])
    assert position_index(seq, "forward").tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert position_index(seq, "backward").tolist() == [[2, 1, 0, 0], [1, 0, 0, 0]]
    model = build_recommender(20, RecommendParams(item_repr="id", id_dim=16, positions="backward"))
    assert model.positions == "backward"
    model.eval()
    table, _ = model.items()
    with torch.no_grad():  # the last item sits at position 0 however long the history: padding changes nothing
        short = model.last_hidden(torch.tensor([[3, 4, 5, 0, 0, 0]]), torch.tensor([3]), table)
        longer_pad = model.last_hidden(torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0]]), torch.tensor([3]), table)
    assert torch.allclose(short, longer_pad, atol=1e-6)
    with pytest.raises(ValueError, match="positions must be"):
        SASRec(ItemTable(5, "id", id_dim=8), positions="sideways")


def test_recbole_block_options_reach_the_layers_and_still_learn():
    """recommend.block / ffn_dim / activation / position_std, set as overrides, build RecBole's post-norm SASRec
    (input LayerNorm, 4x feed-forward, gelu), which learns (causality: test_sasrec_is_causal); the default stays
    pre-norm, FFN = d."""
    from semid.tasks.config import load_config

    default = build_recommender(30, RecommendParams(item_repr="id", id_dim=16))
    assert default.input_norm is None and default.blocks.layers[0].norm_first
    assert default.blocks.layers[0].linear1.out_features == 16
    rc = load_config(None, ["recommend.block=post_ln", "recommend.ffn_dim=64", "recommend.activation=gelu",
                            "recommend.position_std=0.5", "recommend.item_repr=id", "recommend.id_dim=16",
                            "recommend.layers=1", "recommend.epochs=15", "recommend.patience=15",
                            "recommend.dropout=0.1", "recommend.lr=0.005", "recommend.max_len=10",
                            "recommend.negatives=10"]).recommend
    model = build_recommender(30, rc)
    layer = model.blocks.layers[0]
    assert model.input_norm is not None and not layer.norm_first
    assert layer.linear1.out_features == 64 and layer.activation is torch.nn.functional.gelu
    assert 0.4 < float(model.pos.weight.detach().std()) < 0.6
    split = Split(_cycle_sequences(), 30, rc.negatives, 0)
    train(model, split, rc)
    assert evaluate(model, split, "test", rc.max_len)["full"]["recall@10"] > 0.9  # random would be 10 / 30
    with pytest.raises(ValueError, match="block must be"):
        SASRec(ItemTable(5, "id", id_dim=8), block="sandwich")


def test_sasrec_block_by_hand():
    """block=sasrec (RecTools' layout): one head, no dropout, the block output equals f + FFN(f) with f = LN(q + attn),
    where the query q = LN(x) attends causally over keys and values from the raw x, computed here with plain
    matrix products (a pre-norm block, x + attn(LN(x)) then h + FFN(LN(h)), would not match)."""
    torch.manual_seed(0)
    d, t = 8, 5
    model = SASRec(ItemTable(20, "id", id_dim=d), max_len=t, layers=1, heads=1, dropout=0.0, block="sasrec").eval()
    block = model.blocks.layers[0]
    x = torch.randn(2, t, d)

    def ln(v, norm):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + norm.eps) \
            * norm.weight + norm.bias

    wq, wk, wv = block.attn.in_proj_weight.split(d)
    bq, bk, bv = block.attn.in_proj_bias.split(d)
    q = ln(x, block.q_norm)
    scores = (q @ wq.T + bq) @ (x @ wk.T + bk).transpose(1, 2) / d ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    attn = torch.softmax(scores, -1) @ (x @ wv.T + bv) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    f = ln(q + attn, block.ff_norm)
    lin1, lin2 = block.ffn[0], block.ffn[3]
    expected = f + torch.relu(f @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    with torch.no_grad():
        got = model.blocks(x, model.causal[:t, :t])
        assert torch.allclose(got, expected, atol=1e-5)
    assert model.norm.eps == 1e-8


def test_pad_keys_equal_rectools_left_padded_attention():
    """pad_keys: our right-padded blocks with one pad slot weighted by log(number of pads) give the same hidden states
    at every real position as RecTools' computation: left-padded to max_len, pads zeroed before each block and the
    causal mask alone (no key padding mask), so each query also attends to every pad. Lengths 1, 3 and max_len (no
    pad: the slot is off); two blocks, two heads. Without pad_keys the outputs differ where there are pads."""
    torch.manual_seed(0)
    d, max_len = 8, 6
    model = SASRec(ItemTable(20, "id", id_dim=d), max_len=max_len, layers=2, heads=2, dropout=0.0, block="sasrec",
                   pad_keys=True).eval()
    lengths = [1, 3, max_len]
    right = torch.zeros(3, max_len, d)
    for i, n in enumerate(lengths):
        right[i, :n] = torch.randn(n, d)
    pads = torch.tensor([max_len - n for n in lengths])
    bias = torch.where(pads > 0, pads.clamp(min=1).float().log(), float("-inf"))
    with torch.no_grad():
        got = model.blocks(right, model.causal, pad_bias=bias)
        plain = model.blocks(right, model.causal)
        for i, n in enumerate(lengths):
            keep = (torch.arange(max_len) >= max_len - n).float()[None, :, None]
            left = torch.cat([torch.zeros(max_len - n, d), right[i, :n]])[None]
            for layer in model.blocks.layers:
                left = layer(left * keep, model.causal)
            assert torch.allclose(got[i, :n], left[0, max_len - n:], atol=1e-5), n
            assert torch.allclose(got[i, :n], plain[i, :n], atol=1e-5) == (n == max_len), n
    seq = torch.tensor([[3, 4, 0, 0, 0, 0]])
    with torch.no_grad():
        table = model.items()[0]
        with_pads = model.encode(seq, table)
        model.pad_keys = False
        assert not torch.allclose(with_pads[:, :2], model.encode(seq, table)[:, :2])
    with pytest.raises(ValueError, match="pad_keys needs block='sasrec'"):
        SASRec(ItemTable(5, "id", id_dim=8), block="pre_ln", pad_keys=True)


def test_xavier_init_is_rectools_and_keeps_the_codebooks():
    """recommend.init=xavier (set as an override): the ID table and the position table are xavier-normal (std
    sqrt(2 / (fan_in + fan_out))) and item rows enter unscaled; a unified table keeps its codebook rows; the default
    scales the N(0, .02) rows by sqrt(d); an unknown init is refused."""
    from semid.tasks.config import load_config

    torch.manual_seed(0)
    rc = load_config(None, ["recommend.init=xavier", "recommend.block=sasrec", "recommend.item_repr=id",
                            "recommend.id_dim=64", "recommend.max_len=50"]).recommend
    model = build_recommender(4000, rc)
    assert model.input_scale == 1.0 and model.block == "sasrec"
    assert abs(float(model.items.ids.weight.detach().std()) - (2 / (4000 + 64)) ** 0.5) < 2e-3
    assert abs(float(model.pos.weight.detach().std()) - (2 / (50 + 64)) ** 0.5) < 0.01
    default = build_recommender(4000, RecommendParams(item_repr="id", id_dim=64))
    assert default.input_scale == 8.0 and abs(float(default.items.ids.weight.detach().std()) - 0.02) < 2e-3
    codebooks = [torch.randn(4, 6), torch.randn(4, 6)]
    items = ItemTable(10, "unified", id_dim=4, codes=torch.randint(0, 4, (10, 2)), codebooks=codebooks)
    SASRec(items, max_len=6, layers=1, heads=1, init="xavier")
    assert all(torch.equal(level.weight, cb) for level, cb in zip(items.levels, codebooks, strict=True))
    with pytest.raises(ValueError, match="init must be"):
        SASRec(ItemTable(5, "id", id_dim=8), init="kaiming")


def test_rectools_layout_learns():
    """block=sasrec with init=xavier and backward positions learns the cycle task (random would be 10 / 30)."""
    from semid.tasks.config import load_config

    rc = load_config(None, ["recommend.block=sasrec", "recommend.init=xavier", "recommend.positions=backward",
                            "recommend.item_repr=id", "recommend.id_dim=16", "recommend.layers=1",
                            "recommend.heads=1", "recommend.epochs=30", "recommend.patience=30",
                            "recommend.dropout=0.1", "recommend.lr=0.005", "recommend.max_len=10",
                            "recommend.negatives=10"]).recommend
    torch.manual_seed(0)
    model = build_recommender(30, rc)
    split = Split(_cycle_sequences(), 30, rc.negatives, 0)
    train(model, split, rc)
    assert evaluate(model, split, "test", rc.max_len)["full"]["recall@10"] > 0.9


def test_table_dropout_drops_item_rows_in_training_only():
    """recommend.table_dropout reaches the item table: in training the table (the candidates of the full softmax as
    well as the input rows, and the rows a sampled batch touches) is dropped out and rescaled; in evaluation it is
    the plain table; padding stays zero; the default (0) leaves training unchanged; 1.0 is refused."""
    from semid.tasks.config import ConfigError, load_config

    rc = load_config(None, ["recommend.table_dropout=0.5", "recommend.item_repr=id", "recommend.id_dim=16"]).recommend
    model = build_recommender(30, rc)
    model.train()
    table, _ = model.items()
    plain = model.items.ids.weight
    zeroed = table[1:] == 0
    assert 0.3 < float(zeroed.float().mean()) < 0.7 and torch.all(table[0] == 0)
    assert torch.allclose(table[1:][~zeroed], 2 * plain[~zeroed])  # kept entries scaled by 1 / (1 - p)
    rows = model.items.rows(torch.tensor([0, 3, 5]))
    assert torch.all(rows[0] == 0) and bool((rows[1:] == 0).any())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.items()[0][1:], plain)
    default = build_recommender(30, RecommendParams(item_repr="id", id_dim=16))
    default.train()
    assert torch.equal(default.items()[0][1:], default.items.ids.weight)
    with pytest.raises(ConfigError, match="table_dropout"):
        load_config(None, ["recommend.table_dropout=1.0"])


def test_unified_item_vector_is_codeword_sum_plus_id():
    codebooks = [torch.randn(4, 64), torch.randn(4, 64)]
    codes = torch.tensor([[0, 1], [0, 1], [2, 3]])
    table, _ = ItemTable(3, "unified", id_dim=8, codes=codes, codebooks=codebooks)()
    assert table.shape == (4, 72) and torch.all(table[0] == 0)
    assert torch.allclose(table[1, :64], codebooks[0][0] + codebooks[1][1])
    assert torch.allclose(table[1, :64], table[2, :64]) and not torch.allclose(table[1, 64:], table[2, 64:])
    scaled = ItemTable(3, "unified", id_dim=8, codes=codes, codebooks=codebooks, id_scale=4.0)
    table, _ = scaled()
    assert torch.allclose(table[1:, 64:], 4.0 * scaled.ids.weight)  # only the ID part is scaled
    assert build_recommender(5, RecommendParams(item_repr="id", unified_id_scale=4.0)).items.id_scale == 1.0
    assert torch.allclose(table[1, :64], codebooks[0][0] + codebooks[1][1])
    sem, _ = ItemTable(3, "semantic", codes=codes, codebooks=codebooks)()
    assert sem.shape == (4, 64)
    with pytest.raises(ValueError, match="needs semantic codes"):
        ItemTable(3, "semantic")


@pytest.mark.parametrize("loss", ["ce", "bce", "sampled"])
def test_sasrec_learns_a_predictable_sequence_and_is_deterministic(loss):
    seqs = _cycle_sequences()
    rc = RecommendParams(item_repr="id", id_dim=32, loss=loss, epochs=15, patience=15, dropout=0.1, lr=5e-3,
                         max_len=10, negatives=10, layers=1, train_negatives=8, negative_sampling="popularity")
    split = Split(seqs, 30, rc.negatives, 0)
    runs = []
    for _ in range(2):
        model = build_recommender(30, rc)
        summary = train(model, split, rc)
        runs.append(evaluate(model, split, "test", rc.max_len))
    assert runs[0] == runs[1]  # same seed, same data -> identical metrics
    assert summary["best_epoch"] >= 0
    assert runs[0]["full"]["recall@10"] > 0.9  # random would be 10 / 30
    assert runs[0]["sampled99"]["recall@1"] > 0.5


def test_evaluation_of_one_protocol_equals_that_protocol_of_the_full_evaluation():
    """Validation scores only the protocol it stops on; each protocol alone gives what the full evaluation gives."""
    seqs = _cycle_sequences(n_users=40)
    rc = RecommendParams(item_repr="id", id_dim=8, max_len=10, layers=1)
    split = Split(seqs, 30, 10, 0)
    torch.manual_seed(0)
    model = build_recommender(30, rc)
    everything = evaluate(model, split, "valid", rc.max_len, batch_size=7)
    assert set(everything) == {"full", "full_masked", "sampled99"}
    assert everything["full"] != everything["full_masked"]  # the history mask changes the ranking here
    for protocol in everything:
        assert evaluate(model, split, "valid", rc.max_len, 7, (protocol,)) == {protocol: everything[protocol]}
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluate(model, split, "valid", rc.max_len, 7, ("masked",))


def test_adam_betas_reach_the_optimizer(monkeypatch):
    """recommend.betas, set as an override, is the betas of the Adam that `train` hands to the training loop."""
    import semid.models.seqrec as seqrec
    from semid.tasks.config import load_config

    rc = load_config(None, ["recommend.betas=[0.9, 0.98]", "recommend.item_repr=id", "recommend.lr=0.002",
                            "recommend.weight_decay=0.01", "recommend.id_dim=8", "recommend.layers=1"]).recommend
    assert rc.betas == (0.9, 0.98) and RecommendParams().betas == (0.9, 0.999)
    seen = {}

    def fake_fit(model, optimizer, **kwargs):
        seen.update(optimizer.param_groups[0])
        return {"best_epoch": 0, "epochs": 0, "best_valid": 0.0, "seconds_per_epoch": 0.0, "history": []}

    monkeypatch.setattr(seqrec, "fit", fake_fit)
    train(build_recommender(30, rc), Split(_cycle_sequences(), 30, 10, 0), rc)
    assert (seen["betas"], seen["lr"], seen["weight_decay"]) == ((0.9, 0.98), 0.002, 0.01)


def test_semantic_sasrec_trains_on_codes():
    seqs = _cycle_sequences()
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(30) % 8, rng.integers(0, 8, 30)], 1)

    class Codebook:  # the two attributes the recommender reads from a fitted quantizer
        levels = 2
        codebooks = [0.1 * torch.randn(8, 16), 0.1 * torch.randn(8, 16)]

    rc = RecommendParams(item_repr="unified", unified_id_dim=8, epochs=15, patience=15, dropout=0.1, lr=1e-2,
                         max_len=10, negatives=10, layers=1, heads=2)
    model = build_recommender(30, rc, codes, Codebook())
    assert model.items.dim == 24
    train(model, Split(seqs, 30, 10, 0), rc)
    assert evaluate(model, Split(seqs, 30, 10, 0), "test", 10)["full"]["recall@10"] > 0.6


def _synthetic_ranking(n=3000, seed=0) -> RankData:
    """Two categorical fields; interact depends on field 0, like (given interact) on field 1."""
    rng = np.random.default_rng(seed)
    data = RankData(tasks=["interact", "like"], cat_fields=["a", "b", "noise"], cat_vocab=[10, 10, 10])
    for name in ("train", "valid", "test"):
        cat = rng.integers(0, 10, size=(n, 3))
        interact = (cat[:, 0] < 5).astype(np.int64) ^ (rng.random(n) < 0.1)
        like = ((cat[:, 1] % 2 == 0) & (interact == 1)).astype(np.int64)
        mask = np.stack([np.ones(n, bool), interact == 1], 1)
        data.splits[name] = {"cat": torch.from_numpy(cat), "labels": torch.from_numpy(np.stack([interact, like], 1)),
                             "mask": torch.from_numpy(mask)}
    return data


@pytest.mark.parametrize("kind", ["dtn", "mmoe", "shared-bottom"])
def test_rankers_learn_both_tasks(kind):
    data = _synthetic_ranking()
    rc = RankerParams(model=kind, epochs=6, patience=6, batch_size=256, lr=3e-3, embed_dim=8, module_dim=16)
    model = make_ranker(data, rc)
    train_ranker(model, data, rc)
    aucs = task_aucs(model, data, "test")
    assert aucs["interact"] > 0.85 and aucs["like"] > 0.9


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_bit_exact_under_a_seed():
    """Repeated items in a batch accumulate embedding gradients; with torch's parallel atomic adds two
    same-seed runs differed in the last bits after one epoch (and by .0004 test NDCG@10 on ml-100k)."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 400, 40) for _ in range(300)]
    rc = RecommendParams(item_repr="id", id_dim=32, epochs=2, patience=5, max_len=40, negatives=10, layers=1,
                         batch_size=128)
    split = Split(seqs, 400, rc.negatives, 0)
    sasrec = []
    for _ in range(2):  # build, then fit: build_model seeds the init and the dropout stream
        sasrec.append(build_recommender(400, rc))
        train(sasrec[-1], split, rc)
    assert _weights_equal(*sasrec)
    data, rk = _synthetic_ranking(), RankerParams(model="dtn", epochs=2, patience=2, batch_size=256, embed_dim=8)
    dtn = []
    for _ in range(2):
        dtn.append(make_ranker(data, rk))
        train_ranker(dtn[-1], data, rk)
    assert _weights_equal(*dtn)
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


def test_deterministic_block_skips_the_nan_fill_of_new_tensors_and_restores_it():
    """torch fills every new tensor with NaN under deterministic algorithms unless told not to: 10 % of a SASRec
    epoch on ml-100k. Inside the block a new tensor is left as allocated; outside, the caller's settings return."""
    from semid.models.determinism import deterministic

    fill = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert torch.utils.deterministic.fill_uninitialized_memory == fill
    assert not torch.are_deterministic_algorithms_enabled()


def test_dtn_task_sensitive_branch_stops_the_upstream_gradient():
    fields = FieldEmbedding([10, 10], [], 0, 4)
    model = DTN(fields, 2, 4, module_dim=8, tower_dims=[8, 4])
    cat = torch.randint(0, 10, (16, 2))
    logits = model(cat)
    assert logits.shape == (16, 2)
    loss = multitask_loss(logits, torch.ones(16, 2, dtype=torch.long),
                          torch.tensor([[False, True]] * 16), [1.0, 1.0])  # only the downstream task counts
    loss.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.towers[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.own[0].parameters())


def test_masked_rows_do_not_count():
    logits = torch.tensor([[0.0, 5.0], [0.0, -5.0]])
    labels = torch.tensor([[1, 0], [1, 0]])
    with_mask = multitask_loss(logits, labels, torch.tensor([[True, False], [True, True]]), [1.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(2), torch.ones(2)) + \
        torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([-5.0]), torch.zeros(1))
    assert torch.isclose(with_mask, expected)
    with pytest.raises(ValueError, match="unknown ranker .ple."):
        RankerParams(model="ple")
    with pytest.raises(ValueError, match="unknown ranker 'ple'"):
        build_ranker(RankerParams().model_construct(model="ple"), fields=None, tasks=2)


def test_ali_ccp_sample_smoke_run(shared_mirror, tmp_path):
    from semid.tasks.config import load_config
    from semid.tasks.rank import rank

    cfg = load_config(None, [f"data.root={tmp_path}", f"data.mirror={shared_mirror}", "ranker.epochs=2"])
    out = rank("ali-ccp-sample", cfg)
    assert out["tasks"] == ["click", "purchase"] and out["rows"]["train"] == 100
    assert 0.0 <= out["metrics"]["test_auc_click"] <= 1.0
    assert (tmp_path / "rank" / "ali-ccp-sample" / "dtn" / "model.safetensors").exists()


def test_joint_rqvae_inside_sasrec_trains_end_to_end():
    from semid.models.rqvae import RQVAE

    rng = np.random.default_rng(0)
    text = rng.normal(size=(30, 24)).astype(np.float32)
    quantizer = RQVAE(QuantizerParams(method="rqvae", levels=2, codebook_size=8, distances=["cosine", "euclidean"],
                                      hidden=[16], dim=8, epochs=3, batch_size=16)).fit(text)
    rc = RecommendParams(item_repr="unified", joint=True, unified_id_dim=8, epochs=3, patience=3, dropout=0.1,
                         max_len=10, negatives=10, layers=1, heads=2)
    codes = quantizer.encode(text)
    model = build_recommender(30, rc, codes, quantizer, text)
    assert model.items.joint is not None and model.items.dim == 16
    before = [p.detach().clone() for p in model.items.joint.encoder.parameters()]
    summary = train(model, Split(_cycle_sequences(), 30, 10, 0), rc)
    assert summary["epochs"] == 3
    after = list(model.items.joint.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the tokenizer was trained
    _, new_codes, aux = model.items.joint()
    assert new_codes.shape == (30, 2) and torch.isfinite(aux)


def _sampled_softmax_by_hand(h, target, table, q, negatives) -> float:
    """Mean over positions i of -log softmax of the target among it and negatives[i] (item ids), every logit minus
    log(K q(item)), a negative equal to the target left out."""
    losses = []
    for i, row in enumerate(negatives):
        k = len(row)
        pos = float(h[i] @ table[target[i]]) - np.log(k * float(q[target[i] - 1]))
        negs = [float(h[i] @ table[j]) - np.log(k * float(q[j - 1])) for j in row if j != int(target[i])]
        losses.append(-pos + np.log(np.exp(np.array([pos, *negs])).sum()))
    return float(np.mean(losses))


def test_sampled_softmax_by_hand_with_logq_and_a_masked_accidental_hit():
    """Two positions, K = 3 negatives drawn from q; the loss equals the hand-computed softmax over the target and
    the negatives, each logit minus log(K q(item)), with a negative equal to the position's target removed."""
    from semid.models.seqrec import NegativeSampler

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # row 0 = padding
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([1, 2])
    q = torch.tensor([0.5, 0.25, 0.25])
    sampler = NegativeSampler(q, 3, logq=True)
    gen = torch.Generator().manual_seed(0)
    neg = torch.multinomial(q, 3, replacement=True, generator=torch.Generator().manual_seed(0)) + 1
    drawn = sampler.draw(gen)
    assert torch.equal(drawn, neg)
    got = sampler.loss(h, target, drawn, table[target], table[drawn])
    assert abs(float(got) - _sampled_softmax_by_hand(h, target, table, q, [neg.tolist()] * 2)) < 1e-5
    plain = NegativeSampler(q, 3, logq=False).loss(h, target, drawn, table[target], table[drawn])
    assert abs(float(plain) - float(got)) > 1e-3  # the correction changes the loss under a non-uniform q
    with pytest.raises(ValueError, match="distribution"):
        NegativeSampler(torch.tensor([0.5, float("nan")]), 3)


def test_per_position_negatives_by_hand():
    """RecTools' SASRec+SS: every position draws its own K negatives ([P, K] from one seeded draw of P x K); the loss
    is the mean over positions of each one's softmax over its target and its own negatives, logQ-corrected, with an
    accidental hit removed. Sharing one row between the positions gives the shared-negatives loss."""
    from semid.models.seqrec import NegativeSampler

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([1, 2])
    q = torch.tensor([0.5, 0.25, 0.25])
    sampler = NegativeSampler(q, 3, logq=True, per_position=True)
    drawn = sampler.draw(torch.Generator().manual_seed(0), positions=2)
    flat = torch.multinomial(q, 6, replacement=True, generator=torch.Generator().manual_seed(0)) + 1
    assert drawn.shape == (2, 3) and torch.equal(drawn, flat.view(2, 3))
    assert sampler.draw(torch.Generator(), positions=0).shape == (0, 3)
    neg = torch.tensor([[1, 2, 3], [2, 2, 1]])  # position 0 draws its target once, position 1 twice
    got = sampler.loss(h, target, neg, table[target], table[neg])
    assert abs(float(got) - _sampled_softmax_by_hand(h, target, table, q, neg.tolist())) < 1e-5
    shared = neg[1]
    one = sampler.loss(h, target, shared.expand(2, 3), table[target], table[shared.expand(2, 3)])
    assert abs(float(one) - float(NegativeSampler(q, 3).loss(h, target, shared, table[target], table[shared]))) < 1e-6
    split = Split(_cycle_sequences(n_users=20), 30, 10, 0)
    for per, shape in (("position", (5, 4)), ("batch", (4,))):
        rc = RecommendParams(loss="sampled", train_negatives=4, negatives_per=per)
        built = NegativeSampler.from_params(split, rc)
        assert built.draw(torch.Generator().manual_seed(0), positions=5).shape == shape


@pytest.mark.parametrize(("positions", "n_rows", "k", "product"),
                         [(1, 9, 5, False), (3, 9, 5, True), (20, 9, 5, True), (200, 101, 1, False)])
def test_per_position_negative_logits_from_the_table_equal_the_gathered_ones(positions, n_rows, k, product,
                                                                             monkeypatch):
    """Per-position negatives take their logits from one product with the batch's table and a column pick instead
    of a [P, K, d] gather when P x K exceeds the U table rows and U <= 100 K: the same logits and the same gradients
    for h and the table as the gather, on every side of the switch (P x K = 5 <= U = 9; 15 and 100 > 9; U = 101 >
    100 K)."""
    from semid.models import seqrec
    from semid.models.seqrec import NegativeSampler

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(n_rows, 4, generator=gen, requires_grad=True)
    h = torch.randn(positions, 4, generator=gen, requires_grad=True)
    rows = torch.randint(0, n_rows, (positions, k), generator=gen)
    used = []
    monkeypatch.setattr(seqrec.torch, "bmm", lambda *a: used.append("gather") or torch.matmul(*a))
    got = NegativeSampler.neg_logits(h, table, rows)
    assert used == ([] if product else ["gather"])
    monkeypatch.undo()
    ref = torch.bmm(table[rows], h[:, :, None])[:, :, 0]
    assert got.shape == (positions, k) and torch.allclose(got, ref, atol=1e-6)
    weights = torch.randn(positions, k, generator=gen)
    grads = torch.autograd.grad((got * weights).sum(), (h, table))
    refs = torch.autograd.grad((ref * weights).sum(), (h, table))
    for g, r in zip(grads, refs, strict=True):
        assert torch.allclose(g, r, atol=1e-5)
    shared = NegativeSampler.neg_logits(h, table, rows[0])
    assert torch.allclose(shared, h @ table[rows[0]].T, atol=1e-6)


@pytest.mark.parametrize("item_repr", ["id", "semantic", "unified"])
def test_table_built_in_chunks_without_autograd_equals_the_whole_build(item_repr):
    """Evaluation builds the item table chunk by chunk (bounded memory at 1M items): bit-identical to the autograd
    build, across chunk boundaries that do and do not divide N + 1, padding row 0 zeros."""
    codebooks = [torch.randn(6, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]

    class Codebook:
        levels = 2

    Codebook.codebooks = codebooks
    codes = np.stack([np.arange(40) % 6, np.random.default_rng(0).integers(0, 6, 40)], 1)
    rc = RecommendParams(item_repr=item_repr, id_dim=8, unified_id_dim=8, unified_id_scale=4.0, max_len=6,
                         layers=1, heads=2)
    torch.manual_seed(0)
    items = build_recommender(40, rc, codes, Codebook()).items
    whole, _ = items()
    assert whole.requires_grad and not whole[0].any()
    with torch.no_grad():
        for chunk in (1, 7, 41, 65_536):
            chunked, _ = items(chunk=chunk)
            assert not chunked.requires_grad and torch.equal(chunked, whole.detach()), chunk


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("item_repr", ["id", "semantic", "unified"])
def test_sampled_loss_on_the_batch_rows_equals_the_whole_table(item_repr, per_position):
    """The sampled softmax builds only the rows its batch touches, renumbered with padding kept at 0; loss and
    every gradient equal those computed on the whole table, for a padded batch and for one without padding (where
    no item may take the padding's place)."""
    from semid.models.seqrec import NegativeSampler

    class Codebook:
        levels = 2
        codebooks = [torch.randn(6, 8, generator=torch.Generator().manual_seed(1)),
                     torch.randn(6, 8, generator=torch.Generator().manual_seed(2))]

    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(40) % 6, rng.integers(0, 6, 40)], 1)
    rc = RecommendParams(item_repr=item_repr, id_dim=8, unified_id_dim=8, unified_id_scale=4.0, max_len=6, layers=1,
                         heads=2, loss="sampled", train_negatives=7)
    torch.manual_seed(0)
    model = build_recommender(40, rc, codes, Codebook()).eval()  # no dropout: both paths see the same network
    sampler = NegativeSampler(torch.rand(40) + 0.1, 7, per_position=per_position)
    index = torch.tensor([0, 3, 40, 3])
    assert torch.equal(model.items.rows(index), model.items()[0][index])  # row 0 = padding = zeros
    padded = torch.tensor([[3, 9, 0, 0, 0, 0], [5, 5, 12, 40, 1, 0]])
    full = torch.tensor([[3, 9, 17, 22, 31, 2], [5, 5, 12, 40, 1, 7]])
    for seq in (padded, full):
        target = torch.where(seq > 0, (seq * 7) % 40 + 1, 0)
        model.zero_grad()
        got = model.loss(seq, target, "sampled", torch.Generator().manual_seed(3), sampler)
        got.backward()
        got_grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        model.zero_grad()
        table, _ = model.items()
        h, valid = model.encode(seq, table), target > 0
        neg = sampler.draw(torch.Generator().manual_seed(3), int(valid.sum()))
        assert neg.shape == ((int(valid.sum()), 7) if per_position else (7,))
        ref = sampler.loss(h[valid], target[valid], neg, table[target[valid]], table[neg])
        ref.backward()
        assert abs(float(got.detach()) - float(ref.detach())) < 1e-5
        ref_grads = {k: v.grad for k, v in model.named_parameters() if v.grad is not None}
        assert got_grads.keys() == ref_grads.keys() and got_grads
        for k, g in ref_grads.items():
            assert torch.allclose(got_grads[k], g, atol=1e-6), k


@pytest.mark.parametrize("block,positions", [("pre_ln", "forward"), ("sasrec", "backward")])
@pytest.mark.parametrize("kind", ["ce", "bce", "sampled"])
def test_a_batch_in_padding_groups_has_the_loss_and_gradients_of_the_padded_batch(kind, block, positions):
    """train_batches' 'shuffled' batches come as groups, each padded to its own longest; the loss and every gradient
    equal those of the same rows in one [B, T] padded to the longest (causal attention, pads after real items)."""
    from semid.models.seqrec import NegativeSampler

    rc = RecommendParams(item_repr="id", id_dim=8, max_len=6, layers=2, heads=2, loss=kind, train_negatives=5,
                         block=block, positions=positions, pad_keys=block == "sasrec")
    torch.manual_seed(0)
    model = build_recommender(30, rc).eval()  # no dropout: both paths see the same network
    sampler = NegativeSampler(torch.rand(30) + 0.1, 5) if kind == "sampled" else None
    short = torch.tensor([[3, 9, 0], [4, 0, 0]])
    long = torch.tensor([[5, 5, 12, 30, 1, 2], [7, 8, 9, 10, 0, 0]])
    whole = torch.cat([torch.nn.functional.pad(short, (0, 3)), long])
    results = []
    for seq in ((short, long), whole):
        target = tuple(torch.where(s > 0, (s * 7) % 30 + 1, 0) for s in seq) if isinstance(seq, tuple) else \
            torch.where(seq > 0, (seq * 7) % 30 + 1, 0)
        model.zero_grad()
        value = model.loss(seq, target, kind, torch.Generator().manual_seed(3), sampler)
        value.backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}
        results.append((float(value.detach()), grads))
    (grouped, grouped_grads), (padded, padded_grads) = results
    assert abs(grouped - padded) < 1e-6 and grouped_grads.keys() == padded_grads.keys() and grouped_grads
    for k, g in padded_grads.items():
        assert torch.allclose(grouped_grads[k], g, atol=1e-6), k


def test_evaluation_on_a_seeded_user_sample_trains_on_everyone():
    seqs = _cycle_sequences(n_users=50)
    full, sample = Split(seqs, 30, 10, 0), Split(seqs, 30, 10, 0, eval_users=20)
    again = Split(seqs, 30, 10, 0, eval_users=20)
    assert len(sample.train) == len(full.train) == 50 and sample.eval_users == 20 and full.eval_users == 50
    assert len(sample.targets["test"]) == len(sample.negatives["test"]) == 20
    assert np.array_equal(sample.targets["valid"], again.targets["valid"])
    picked = {tuple(s) for s in sample.eval_inputs["test"]}
    assert picked <= {tuple(s[:-1]) for s in seqs}
    assert Split(seqs, 30, 10, 0, eval_users=500).eval_users == 50
