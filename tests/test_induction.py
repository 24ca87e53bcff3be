"""Induction: the data generator, every score on planted patterns and weights, the smoke preset end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from experiments import induction as exp
from toylab import runs
from toylab import transformer as tf
from toylab.analysis import attention

CFG = exp.Config(n_tokens=32, seq_len=48, repeat_min=4, repeat_max=12, d_model=16, n_heads=2, d_head=4)


def test_the_generator_repeats_where_it_says_with_varied_lengths_and_offsets():
    toks, rep = (np.asarray(x) for x in exp.make_batch(jax.random.key(0), CFG, 256))
    assert toks.shape == (256, 48) and rep.shape == (256, 47)
    assert np.all(toks[:, 0] == exp.BOS) and np.all((toks[:, 1:] >= 1) & (toks[:, 1:] <= 32))
    lengths, offsets = [], []
    for row, mask in zip(toks, rep):
        L = mask.sum() + 1  # the copy's first token is not predictable, the other L-1 are
        dst = int(np.argmax(mask))  # the target after position dst is the copy's second token
        span = row[dst:dst + L]
        srcs = [s for s in range(1, dst - L + 1) if np.array_equal(row[s:s + L], span)]
        assert srcs, "the second copy repeats an earlier span"
        assert not mask[:dst].any() and not mask[dst + L - 1:].any()
        lengths.append(L)
        offsets.append(dst - srcs[0])
    assert set(lengths) == set(range(4, 13))  # every length of the range occurs
    assert len(set(offsets)) > 20  # offsets vary: no fixed positional shortcut


def test_markov_tokens_follow_the_bigram_table():
    cfg = exp.Config(n_tokens=4, seq_len=64, repeat_min=2, repeat_max=4, markov=True, markov_concentration=0.2)
    toks = np.asarray(exp.base_tokens(jax.random.key(1), cfg, 512)) - 1
    counts = np.zeros((4, 4))
    np.add.at(counts, (toks[:, :-1].ravel(), toks[:, 1:].ravel()), 1)
    np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), exp.bigram_table(cfg), atol=0.03)


def planted(kind: str, T: int = 2 * 8 + 1) -> jnp.ndarray:
    """Attention patterns ``[1, 1, 1, T, T]`` of one head: previous-token, induction (|R| = 8), or uniform."""
    q, k = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    if kind == "prev":
        P = (k == np.maximum(q - 1, 0)).astype(float)
    elif kind == "induction":
        P = np.where(q > 8, k == q - 8 + 1, k == 0).astype(float)
    else:
        P = (k <= q) / (q + 1.0)
    return jnp.asarray(P)[None, None, None]


def test_scores_on_planted_heads():
    assert float(attention.prev_token_score(planted("prev"))[0, 0]) == 1.0
    assert float(attention.induction_score(planted("induction"), 8)[0, 0]) == 1.0
    assert float(attention.induction_score(planted("prev"), 8)[0, 0]) == 0.0
    uniform_prev = float(attention.prev_token_score(planted("uniform"))[0, 0])
    assert abs(uniform_prev - np.mean(1 / (np.arange(1, 17) + 1))) < 1e-6  # chance: 1 / (number of keys)
    assert float(attention.induction_score(planted("uniform"), 8)[0, 0]) < 0.15


def planted_model(sign: float = 1.0) -> tf.Transformer:
    """d_model = 8, 2 heads of 2. Layer-0 head 0 reads e0, e1 and writes e2, e3; layer-1 head 1's keys read
    e2, e3 (K-composition with it); layer-1 head 0 reads e4, e5 (none)."""
    mc = tf.TransformerConfig(d_model=8, n_heads=2, d_head=2, d_mlp=0, d_vocab=8, d_vocab_out=8, n_ctx=4,
                              n_layers=2, attn_only=True, positional_embedding="shortformer")
    m = tf.init(jax.random.key(0), mc)
    E = np.eye(8)

    def heads(rows):  # [n_heads, d_model, d_head] reading the given basis pairs
        return jnp.asarray(np.stack([E[:, r] for r in rows]))

    a0 = m.blocks[0].attn
    a0 = tf.Attention(heads([[0, 1], [6, 7]]), heads([[0, 1], [6, 7]]), heads([[0, 1], [6, 7]]),
                      sign * heads([[2, 3], [6, 7]]).transpose(0, 2, 1), None, None, None, None)
    a1 = tf.Attention(heads([[4, 5], [0, 1]]), heads([[4, 5], [2, 3]]), heads([[4, 5], [4, 5]]),
                      heads([[4, 5], [4, 5]]).transpose(0, 2, 1), None, None, None, None)
    blocks = (tf.Block(None, a0, None, None), tf.Block(None, a1, None, None))
    return tf.Transformer(mc, tf.Embed(jnp.eye(8)), m.pos_embed, blocks, None, tf.Unembed(jnp.eye(8), None))


def test_composition_scores_on_planted_matrices():
    comp = attention.composition_scores(planted_model())
    K = comp["K"]
    assert K[0, 1] > 0.4 and abs(K[0, 0]) < 1e-9 and abs(K[1, 1]) < 1e-9  # only head 0 -> head 1 composes
    assert np.argmax(K[:, 1]) == 0
    assert comp["Q"][0, 1] < 1e-9  # head 1's queries read e0, e1, which no layer-0 head writes
    base = attention.composition_baseline(64, 16, draws=50)
    assert 0.08 < base < 0.2  # about 1 / sqrt(d_model) for random factorised matrices


def test_copying_score_signs():
    # layer-0 head 0 maps e0, e1 to e2, e3: no copying; head 1 maps e6, e7 to themselves: +1
    c = np.asarray(attention.copying_scores(planted_model()))
    assert abs(c[0, 1] - 1) < 1e-6 and abs(c[1, 0] - 1) < 1e-6
    m = planted_model()
    a = m.blocks[0].attn
    flipped = tf.Attention(a.W_Q, a.W_K, a.W_V, -a.W_O, None, None, None, None)
    m = tf.Transformer(m.cfg, m.embed, m.pos_embed, (tf.Block(None, flipped, None, None), m.blocks[1]), None, m.unembed)
    assert abs(float(attention.copying_scores(m)[0, 1]) + 1) < 1e-6  # anti-copying head scores -1


def test_smoke_end_to_end(smoke_run):
    run = smoke_run("induction")
    rep = json.loads((run / "report.json").read_text())
    assert rep["experiment"] == "induction" and rep["n_checks"] == 16
    assert len(rep["figures"]) == len(exp.FIGURES) and all(f["caption"] for f in rep["figures"])
    a = runs.open(run).analysis()
    cfg = exp.PRESETS["smoke"]
    n_snap = cfg.n_steps // cfg.checkpoint_every + 1
    assert a["2L.induction_score"].shape == (n_snap, cfg.n_seeds, 2, cfg.n_heads)
    assert a["1L.prev_token_score"].shape == (n_snap, cfg.n_control_seeds, 1, cfg.n_heads)
    assert cfg.n_control_seeds != cfg.n_seeds  # the groups' seed counts are kept apart
    assert a["2L.ablation"].shape == (cfg.n_seeds, 2, cfg.n_heads)


def test_the_step_0_snapshot_is_the_initialisation(smoke_run):
    """The analysis reads the untrained models (the probe's control) from the step-0 snapshots."""
    cfg = exp.PRESETS["smoke"]
    steps, models = exp.load_snapshots(cfg, runs.open(smoke_run("induction")), "2L")
    init, _ = exp.make_train(cfg, 2)
    fresh = jax.jit(lambda ks: jax.lax.map(lambda k: init(k, {})["params"], ks))(exp.group_keys(cfg, "2L"))
    assert steps[0] == 0
    for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(jax.tree.map(lambda x: x[0], models))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
