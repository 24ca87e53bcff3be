"""A small transformer for interpretability, with TransformerLens names, shapes and hooks.

Weights (the names a checkpoint's flat dict uses, so a TransformerLens user can read them):

    embed.W_E               [d_vocab, d_model]
    pos_embed.W_pos         [n_ctx, d_model]
    blocks.{l}.ln1.w, .b    [d_model]                      (normalization="LN" only)
    blocks.{l}.attn.W_Q     [n_heads, d_model, d_head]     W_K, W_V the same
    blocks.{l}.attn.b_Q     [n_heads, d_head]              b_K, b_V the same (use_attn_bias only)
    blocks.{l}.attn.W_O     [n_heads, d_head, d_model]
    blocks.{l}.attn.b_O     [d_model]                      (use_attn_bias only)
    blocks.{l}.ln2.w, .b    [d_model]                      (LN, not attn_only)
    blocks.{l}.mlp.W_in     [d_model, d_mlp]
    blocks.{l}.mlp.b_in     [d_mlp]
    blocks.{l}.mlp.W_out    [d_mlp, d_model]
    blocks.{l}.mlp.b_out    [d_model]
    ln_final.w, .b          [d_model]                      (LN only)
    unembed.W_U             [d_model, d_vocab_out]
    unembed.b_U             [d_vocab_out]                  (use_unembed_bias only)

Hooks. ``run_with_cache`` returns these activations and ``run_with_hooks`` lets a
function replace any of them (a test holds the code to this table; ``pos`` is 1 for
the query-side hooks of the last layer when ``last_only=True``):

    hook_embed                        [batch, pos, d_model]
    hook_pos_embed                    [batch, pos, d_model]
    blocks.{l}.hook_resid_pre         [batch, pos, d_model]
    blocks.{l}.attn.hook_q            [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_k            [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_rot_q        [batch, pos, n_heads, d_head]      (rotary only)
    blocks.{l}.attn.hook_rot_k        [batch, pos, n_heads, d_head]      (rotary only)
    blocks.{l}.attn.hook_v            [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_attn_scores  [batch, n_heads, query_pos, key_pos]
    blocks.{l}.attn.hook_pattern      [batch, n_heads, query_pos, key_pos]
    blocks.{l}.attn.hook_z            [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_result       [batch, pos, n_heads, d_model]
    blocks.{l}.hook_attn_out          [batch, pos, d_model]
    blocks.{l}.hook_resid_mid         [batch, pos, d_model]      (not attn_only)
    blocks.{l}.mlp.hook_pre           [batch, pos, d_mlp]        (not attn_only)
    blocks.{l}.mlp.hook_post          [batch, pos, d_mlp]        (not attn_only)
    blocks.{l}.hook_mlp_out           [batch, pos, d_model]      (not attn_only)
    blocks.{l}.hook_resid_post        [batch, pos, d_model]

``hook_result`` (each head's output, the thing to patch per head) is computed only
when it is cached or hooked, as TransformerLens's ``use_attn_result`` does.

Everything is a pure function of (model, tokens, hooks): no hook state lives on the
model, so ``jit``, ``vmap`` and ``grad`` work through hooks as through any function.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

Hook = Callable[[jax.Array, str], jax.Array]  # (activation, hook name) -> activation
NamesFilter = None | str | Iterable[str] | Callable[[str], bool]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    d_model: int  # width of the residual stream
    n_heads: int  # attention heads per layer
    d_head: int  # width of each head's queries, keys and values
    d_mlp: int  # MLP hidden width (unused when attn_only)
    d_vocab: int  # input tokens
    d_vocab_out: int  # output classes (may differ from d_vocab, e.g. no logit for '=')
    n_ctx: int  # maximum sequence length (rows of W_pos)
    n_layers: int  # transformer blocks
    act_fn: str = "relu"  # MLP nonlinearity: relu or gelu
    attn_only: bool = False  # blocks without MLPs (the induction-head models)
    normalization: str | None = None  # None or "LN" (pre-norm LayerNorm, as in GPT-2)
    positional_embedding: str = "standard"  # "standard": added to the residual stream; "shortformer": to queries and keys only; "rotary": queries and keys rotated by position (W_pos unused)
    rotary_base: int = 10_000  # rotary only: angle of pair i at position t is t * base^(-2i / d_head) (Su et al. 2021)
    use_attn_bias: bool = False  # b_Q, b_K, b_V, b_O
    use_mlp_bias: bool = True  # b_in, b_out
    use_unembed_bias: bool = False  # b_U

    def __post_init__(self) -> None:
        from toylab.config import require

        for f in ("d_model", "n_heads", "d_head", "d_vocab", "d_vocab_out", "n_ctx", "n_layers"):
            require(getattr(self, f) > 0, f, "a positive integer", getattr(self, f))
        require(self.attn_only or self.d_mlp > 0, "d_mlp", "a positive integer", self.d_mlp)
        require(self.act_fn in ACT_FNS, "act_fn", f"one of {sorted(ACT_FNS)}", self.act_fn)
        require(self.normalization in (None, "LN"), "normalization", "None or 'LN'", self.normalization)
        require(self.positional_embedding in ("standard", "shortformer", "rotary"), "positional_embedding",
                "'standard', 'shortformer' or 'rotary'", self.positional_embedding)
        require(self.positional_embedding != "rotary" or self.d_head % 2 == 0, "d_head", "even for rotary positions",
                self.d_head)


ACT_FNS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}


# ---------------------------------------------------------------------------
# Modules: plain pytrees of weights; the forward pass lives in ``_run`` below
# ---------------------------------------------------------------------------


class Embed(eqx.Module):
    W_E: jax.Array


class PosEmbed(eqx.Module):
    W_pos: jax.Array


class LayerNorm(eqx.Module):
    w: jax.Array
    b: jax.Array


class Attention(eqx.Module):
    W_Q: jax.Array
    W_K: jax.Array
    W_V: jax.Array
    W_O: jax.Array
    b_Q: jax.Array | None
    b_K: jax.Array | None
    b_V: jax.Array | None
    b_O: jax.Array | None


class MLP(eqx.Module):
    W_in: jax.Array
    b_in: jax.Array | None
    W_out: jax.Array
    b_out: jax.Array | None


class Block(eqx.Module):
    ln1: LayerNorm | None
    attn: Attention
    ln2: LayerNorm | None
    mlp: MLP | None


class Unembed(eqx.Module):
    W_U: jax.Array
    b_U: jax.Array | None


class Transformer(eqx.Module):
    cfg: TransformerConfig = eqx.field(static=True)
    embed: Embed
    pos_embed: PosEmbed
    blocks: tuple[Block, ...]
    ln_final: LayerNorm | None
    unembed: Unembed


def init(key: jax.Array, cfg: TransformerConfig, std: Callable[[str], float] | None = None,
         dtype: Any = jnp.float32) -> Transformer:
    """Weights ~ N(0, std(name)^2) (name as in the table above, e.g. ``"W_U"``); biases 0, LN gains 1.

    The default std is TransformerLens's ``0.8 / sqrt(d_model)``; experiments pass their paper's.
    """
    std = std or (lambda name: 0.8 / cfg.d_model**0.5)
    keys = iter(jax.random.split(key, 8 + 8 * cfg.n_layers))
    h, dm, dh = cfg.n_heads, cfg.d_model, cfg.d_head

    def w(name: str, *shape: int) -> jax.Array:
        return std(name) * jax.random.normal(next(keys), shape, dtype)

    def zeros(on: bool, *shape: int) -> jax.Array | None:
        return jnp.zeros(shape, dtype) if on else None

    def ln() -> LayerNorm | None:
        return LayerNorm(jnp.ones(dm, dtype), jnp.zeros(dm, dtype)) if cfg.normalization == "LN" else None

    blocks = []
    for _ in range(cfg.n_layers):
        ab = cfg.use_attn_bias
        attn = Attention(w("W_Q", h, dm, dh), w("W_K", h, dm, dh), w("W_V", h, dm, dh), w("W_O", h, dh, dm),
                         zeros(ab, h, dh), zeros(ab, h, dh), zeros(ab, h, dh), zeros(ab, dm))
        mlp = None if cfg.attn_only else MLP(w("W_in", dm, cfg.d_mlp), zeros(cfg.use_mlp_bias, cfg.d_mlp),
                                             w("W_out", cfg.d_mlp, dm), zeros(cfg.use_mlp_bias, dm))
        blocks.append(Block(ln(), attn, None if cfg.attn_only else ln(), mlp))
    return Transformer(cfg, Embed(w("W_E", cfg.d_vocab, dm)), PosEmbed(w("W_pos", cfg.n_ctx, dm)), tuple(blocks),
                       ln(), Unembed(w("W_U", dm, cfg.d_vocab_out), zeros(cfg.use_unembed_bias, cfg.d_vocab_out)))


def hook_names(cfg: TransformerConfig) -> list[str]:
    """Every hook name of a model with this config, in forward order."""
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        rot = ("rot_q", "rot_k") if cfg.positional_embedding == "rotary" else ()
        names += [f"{b}.hook_resid_pre"] + [f"{b}.attn.hook_{n}" for n in
                                             ("q", "k", "v", *rot, "attn_scores", "pattern", "z", "result")]
        names += [f"{b}.hook_attn_out"]
        if not cfg.attn_only:
            names += [f"{b}.hook_resid_mid", f"{b}.mlp.hook_pre", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out"]
        names += [f"{b}.hook_resid_post"]
    return names


# ---------------------------------------------------------------------------
# The forward pass, with hooks
# ---------------------------------------------------------------------------


class _Hooks:
    """Applies the user's hooks and records the cache while a forward pass is traced."""

    def __init__(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Hook]], names_filter: NamesFilter,
                 cache: bool):
        self.fwd_hooks = list(fwd_hooks)
        self.keep = _filter(names_filter) if cache else (lambda name: False)
        self.cache: dict[str, jax.Array] = {}

    def wants(self, name: str) -> bool:
        """Whether an optional activation (``hook_result``) must be computed."""
        return self.keep(name) or self.edits(name)

    def edits(self, name: str) -> bool:
        """Whether a hook may replace this activation."""
        return any(_matches(sel, name) for sel, _ in self.fwd_hooks)

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        for sel, fn in self.fwd_hooks:
            if _matches(sel, name):
                x = fn(x, name)
        if self.keep(name):
            self.cache[name] = x
        return x


def _matches(sel: str | Callable[[str], bool], name: str) -> bool:
    return sel(name) if callable(sel) else sel == name


def _filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


def _layer_norm(ln: LayerNorm | None, x: jax.Array) -> jax.Array:
    if ln is None:
        return x
    x = x - x.mean(-1, keepdims=True)
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * ln.w + ln.b


class _Embedded(NamedTuple):
    """Layer 0's input ``W_E[tokens] + W_pos[positions]`` (the second term optional), kept factored.

    Why: projecting the rows of W_E and W_pos and then gathering equals gathering
    and then projecting, but costs (d_vocab + n_ctx) rows instead of batch x pos:
    for grokking's 3,830 x 3 inputs over 114 tokens, a third of the step's FLOPs.
    """

    tokens: jax.Array  # [batch, pos]
    W_E: jax.Array
    W_pos: jax.Array | None  # rows for these positions, or None if not added

    def last(self, n: int) -> "_Embedded":
        return self._replace(tokens=self.tokens[:, -n:], W_pos=None if self.W_pos is None else self.W_pos[-n:])


def _project(x: "jax.Array | _Embedded", W: jax.Array) -> jax.Array:
    """``[batch, pos, d_model] x [n_heads, d_model, d_head] -> [batch, pos, n_heads, d_head]``."""
    if isinstance(x, _Embedded):
        out = jnp.einsum("vd,hde->vhe", x.W_E, W)[x.tokens]
        return out if x.W_pos is None else out + jnp.einsum("pd,hde->phe", x.W_pos, W)
    return jnp.einsum("bpd,hde->bphe", x, W)


def _rows(x: _Embedded, W: jax.Array, b: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The projection of every (token, position) pair, ``[n_heads, d_vocab * pos, d_head]``, and each
    input's row in it, ``[batch, pos]``: the same values ``_project`` gathers per input."""
    rows = jnp.einsum("vd,hde->hve", x.W_E, W)
    idx = x.tokens
    if x.W_pos is not None:
        n = x.W_pos.shape[0]
        rows = (rows[:, :, None] + jnp.einsum("pd,hde->hpe", x.W_pos, W)[:, None]).reshape(W.shape[0], -1, W.shape[-1])
        idx = x.tokens * n + jnp.arange(n)
    return (rows if b is None else rows + b[:, None]), idx


def _table_scores(x_q: _Embedded, x_k: _Embedded, attn: Attention) -> jax.Array | None:
    """Scores ``[batch, n_heads, q, k]`` read from the table of every (query row, key row) pair, or
    None where that table would hold more numbers than the per-input keys it replaces.

    Why: grokking's 3,830 inputs draw their three tokens from 114, so the 4 x 114 x 342 query-key
    table is a tenth the size of the per-input keys; gathering from it leaves the backward pass no
    per-input key gradients to transpose and scatter (about 7% of a grokking step on 2 CPU cores).
    """
    n_heads, d_head = attn.W_Q.shape[0], attn.W_Q.shape[-1]
    # Sized from the shapes first: outside jit, building a large model's rows just to reject them would cost memory.
    n_rows_q = x_q.W_E.shape[0] * (1 if x_q.W_pos is None else x_q.W_pos.shape[0])
    n_rows_k = x_k.W_E.shape[0] * (1 if x_k.W_pos is None else x_k.W_pos.shape[0])
    if x_q.tokens.ndim != 2 or n_rows_q * n_rows_k > x_k.tokens.size * d_head:
        return None
    Q, iq = _rows(x_q, attn.W_Q, attn.b_Q)
    K, ik = _rows(x_k, attn.W_K, attn.b_K)
    table = jnp.einsum("hqe,hke->hqk", Q, K).reshape(n_heads, -1) / d_head**0.5
    return table[:, iq[:, :, None] * n_rows_k + ik[:, None, :]].transpose(1, 0, 2, 3)


def _rotate(x: jax.Array, positions: jax.Array, base: int) -> jax.Array:
    """Rotary positions (Su et al. 2021), TransformerLens's layout: dimension i is paired with i + d_head/2,
    and the pair turned by ``position * base^(-2i / d_head)``. ``x``: ``[batch, pos, head, d_head]``."""
    half = x.shape[-1] // 2
    angles = positions[:, None] * base ** (-jnp.arange(half, dtype=x.dtype) / half)  # [pos, half]
    cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _attention(attn: Attention, x_q, x_k, x_v, hk: _Hooks, b: str, n_q: int, rotary_base: int | None = None
               ) -> jax.Array:
    """Causal multi-head attention with queries at the last ``n_q`` positions.

    ``x_q``, ``x_k``, ``x_v``: ``[batch, pos, d_model]`` inputs, or ``_Embedded``.
    ``rotary_base``: rotate queries and keys by position (None: no rotary positions).
    """
    if isinstance(x_q, _Embedded):
        x_q = x_q.last(n_q)
    table = isinstance(x_q, _Embedded) and isinstance(x_k, _Embedded) and rotary_base is None \
        and not hk.wants(f"{b}.hook_q") and not hk.wants(f"{b}.hook_k")
    scores = _table_scores(x_q, x_k, attn) if table else None
    if scores is None:
        q = _project(x_q if isinstance(x_q, _Embedded) else x_q[:, -n_q:], attn.W_Q)
        k = _project(x_k, attn.W_K)
        if attn.b_Q is not None:
            q, k = q + attn.b_Q, k + attn.b_K
        q, k = hk(f"{b}.hook_q", q), hk(f"{b}.hook_k", k)
    v = _project(x_v, attn.W_V)
    v = hk(f"{b}.hook_v", v if attn.b_V is None else v + attn.b_V)
    n_k = v.shape[1]
    # Heads-first operands make (head, batch) the leading batch axes of each small
    # matmul: on a CPU about twice as fast as TransformerLens's "bqhe,bkhe->bhqk".
    heads_first = lambda a: a.transpose(2, 0, 1, 3)  # noqa: E731
    if scores is None:
        if rotary_base is not None:
            q = hk(f"{b}.hook_rot_q", _rotate(q, jnp.arange(n_k - n_q, n_k, dtype=q.dtype), rotary_base))
            k = hk(f"{b}.hook_rot_k", _rotate(k, jnp.arange(n_k, dtype=k.dtype), rotary_base))
        scores = jnp.einsum("hbqe,hbke->hbqk", heads_first(q), heads_first(k)).transpose(1, 0, 2, 3) / q.shape[-1]**0.5
    causal = jnp.arange(n_k - n_q, n_k)[:, None] >= jnp.arange(n_k)[None, :]
    scores = hk(f"{b}.hook_attn_scores", jnp.where(causal, scores, -1e5))  # TransformerLens's IGNORE value
    pattern = hk(f"{b}.hook_pattern", jax.nn.softmax(scores, axis=-1))
    z = jnp.einsum("hbqk,hbke->hbqe", pattern.transpose(1, 0, 2, 3), heads_first(v)).transpose(1, 2, 0, 3)
    z = hk(f"{b}.hook_z", z)
    if hk.wants(f"{b}.hook_result"):
        out = hk(f"{b}.hook_result", jnp.einsum("bqhe,hem->bqhm", z, attn.W_O)).sum(axis=2)
    else:
        out = jnp.einsum("bqhe,hem->bqm", z, attn.W_O)
    return out if attn.b_O is None else out + attn.b_O


def _run(model: Transformer, tokens: jax.Array, hk: _Hooks, last_only: bool) -> jax.Array:
    cfg = model.cfg
    n = tokens.shape[-1]
    inputs = ("hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre")
    # Layer 0 may read its input factored (see _Embedded), unless a hook edits that input.
    factored = model.blocks[0].ln1 is None and cfg.d_vocab + n < tokens.size and not any(map(hk.edits, inputs))
    # A one-layer model's residual stream then enters the output only at the query positions
    # (keys and values read the factored input), so unless a hook reads it the stream is
    # embedded only there: grokking's backward pass no longer pads and scatters zero rows.
    n_in = 1 if factored and last_only and cfg.n_layers == 1 and not any(map(hk.keep, inputs)) else n
    embed = hk("hook_embed", jnp.asarray(model.embed.W_E)[tokens[:, n - n_in:]])  # W_E may be a numpy array
    pos = hk("hook_pos_embed", jnp.broadcast_to(model.pos_embed.W_pos[n - n_in:n], embed.shape))
    shortformer = cfg.positional_embedding == "shortformer"
    rotary = cfg.positional_embedding == "rotary"
    resid = embed if shortformer or rotary else embed + pos
    W_pos = model.pos_embed.W_pos[:n]
    for l, block in enumerate(model.blocks):
        b = f"blocks.{l}"
        resid = hk(f"{b}.hook_resid_pre", resid)
        x = _layer_norm(block.ln1, resid)
        x_qk = x + pos if shortformer else x
        if l == 0 and factored:
            x = _Embedded(tokens, model.embed.W_E, None if shortformer or rotary else W_pos)
            x_qk = x._replace(W_pos=W_pos) if shortformer else x
        # Only the last position's output enters the loss: the last layer's queries,
        # MLP and unembedding need only run there (keys and values at every position).
        n_q = 1 if last_only and l == cfg.n_layers - 1 else n
        attn_out = hk(f"{b}.hook_attn_out", _attention(block.attn, x_qk, x_qk, x, hk, f"{b}.attn", n_q,
                                                       cfg.rotary_base if rotary else None))
        resid = resid[:, resid.shape[1] - n_q:] + attn_out
        if block.mlp is not None:
            resid = hk(f"{b}.hook_resid_mid", resid)
            x = _layer_norm(block.ln2, resid)
            pre = x @ block.mlp.W_in
            pre = hk(f"{b}.mlp.hook_pre", pre if block.mlp.b_in is None else pre + block.mlp.b_in)
            post = hk(f"{b}.mlp.hook_post", ACT_FNS[cfg.act_fn](pre))
            mlp_out = post @ block.mlp.W_out
            resid = resid + hk(f"{b}.hook_mlp_out", mlp_out if block.mlp.b_out is None else mlp_out + block.mlp.b_out)
        resid = hk(f"{b}.hook_resid_post", resid)
    logits = _layer_norm(model.ln_final, resid) @ model.unembed.W_U
    return logits if model.unembed.b_U is None else logits + model.unembed.b_U


def forward(model: Transformer, tokens: jax.Array, *, last_only: bool = False) -> jax.Array:
    """Logits ``[batch, pos, d_vocab_out]`` (``pos`` = 1 with ``last_only``) of int tokens ``[batch, pos]``."""
    return _run(model, tokens, _Hooks([], None, cache=False), last_only)


def run_with_cache(model: Transformer, tokens: jax.Array, names_filter: NamesFilter = None, *,
                   fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Hook]] = (), last_only: bool = False
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits and a dict of activations keyed by hook name (all of them, or those the filter keeps).

    ``names_filter``: None (all), a name, a list of names, or a predicate on names.
    ``fwd_hooks``: as in ``run_with_hooks``; the cache then holds the patched activations.
    """
    hk = _Hooks(fwd_hooks, names_filter, cache=True)
    logits = _run(model, tokens, hk, last_only)
    return logits, hk.cache


def run_with_hooks(model: Transformer, tokens: jax.Array, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Hook]],
                   *, last_only: bool = False) -> jax.Array:
    """Logits with each ``(name or predicate, fn)`` applied in order: ``fn(activation, name)`` replaces it.

    E.g. zero-ablate head 1 of layer 0:
    ``run_with_hooks(m, t, [("blocks.0.attn.hook_z", lambda z, _: z.at[:, :, 1].set(0.0))])``.
    """
    return _run(model, tokens, _Hooks(fwd_hooks, None, cache=False), last_only)


def n_params(model: Transformer) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
