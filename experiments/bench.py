"""``make bench``: training speed against this machine's own measured matmul rate.

    python -m experiments.bench [--steps 200]

For each configuration (superposition, grokking, induction, sae) it times the experiment's real compiled chunk (the same
program ``train`` runs, sharded the same way) after a warm-up, and prints seconds
per 10,000 steps beside a roofline: the matmul FLOPs the step needs divided by the
float32 matmul rate measured here, in this run. It also times the data generator
alone, since random numbers dominate this workload on a CPU, and the naive
``jax.random`` version it replaced. When torch is installed, it ends with the PyTorch
originals' loops timed on the same machine (``bench_torch``).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from toylab import report, tms
from toylab.train import MODEL_AXIS, full_float32_matmuls, make_chunk, model_sharding, on_cpu, use_cpu_cores


def _time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def _time_chunk(chunk, state, hp, t0: int) -> float:
    """Best time of one call of a compiled chunk (it donates its state, so each call takes the last one's)."""
    box = {"state": state}

    def run(hp):
        box["state"], logs = chunk(box["state"], hp, jnp.int32(t0))
        return logs

    return _time(run, hp)


def matmul_rate() -> float:
    """Best float32 matmul FLOP/s on this machine (all cores, one device), over a few sizes."""
    rates = []
    for n in (512, 1024, 2048):
        a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
        f = jax.jit(lambda a: a @ a)
        rates.append(2 * n**3 / _time(f, a))
    return max(rates)


def bench_superposition(rate: float, steps: int) -> list[dict]:
    from experiments import superposition as exp

    cfg = exp.PRESETS["paper"]
    rows = []
    for n, m, k in ((5, 2, 10), (20, 5, 20), (200, 20, 20)):
        hp = {"density": jnp.asarray(20.0 ** -np.linspace(0, 1, k), jnp.float32),
              "importance": jnp.ones((k, n), jnp.float32), "relu": jnp.ones(k, jnp.float32)}
        sharding = model_sharding()
        hp = jax.device_put(hp, sharding)
        init, step = exp.make_train(cfg, n, m)
        keys = jax.random.split(jax.random.key(0), k)
        state = jax.jit(jax.vmap(init), out_shardings=sharding)(keys, hp)
        # as train runs them: the 200-to-20 models (the geometry group) one at a time per device
        per_call = on_cpu(exp.MODELS_PER_CALL["geometry"]) if n == cfg.geometry_n_features else None
        chunk = make_chunk(step, steps, steps, name=f"bench{n}", sharding=sharding, models_per_call=per_call)
        t_step = _time_chunk(chunk, state, hp, 0) / steps
        gen = jax.jit(jax.vmap(lambda key, p: jax.lax.scan(
            lambda c, t: (c + tms.make_batch(jax.random.fold_in(key, t), p, n, cfg.batch_size).sum(), None),
            0.0, jnp.arange(steps))[0]))
        t_gen = _time(gen, keys, hp["density"]) / steps
        naive = jax.jit(jax.vmap(lambda key, p: jax.lax.scan(
            lambda c, t: (c + _naive_batch(jax.random.fold_in(key, t), p, n, cfg.batch_size).sum(), None),
            0.0, jnp.arange(steps))[0]))
        t_naive = _time(naive, keys, hp["density"], repeats=1) / steps
        flops = 5 * 2 * cfg.batch_size * n * m * k  # forward 2 matmuls, backward 3
        rows.append({"config": f"superposition {n}->{m} x {k} (batch {cfg.batch_size})",
                     "s_per_10k": t_step * 1e4, "roofline_s_per_10k": flops / rate * 1e4,
                     "data_s_per_10k": t_gen * 1e4, "naive_data_s_per_10k": t_naive * 1e4})
        if n == cfg.geometry_n_features:
            rows[-1].update(decompose_superposition(cfg, n, m, keys, hp, sharding, per_call, steps))
    return rows


def decompose_superposition(cfg, n: int, m: int, keys, hp, sharding, per_call, steps: int) -> dict:
    """Where the 200-to-20 step's time goes: the same chunk with its parts taken away.

    ``fixed_batch``: the real step with the fresh random batch swapped for a fixed one
    (the model's density applied to one fixed draw; a number from the step's key is
    added at 1e-30 so XLA cannot hoist the batch out of the loop). ``matmuls``: the five matmuls of the step alone
    (forward 2, backward 3) and a plain weight update.
    """
    from unittest import mock

    from experiments import superposition as exp

    u0 = jnp.asarray(np.random.RandomState(0).rand(n, cfg.batch_size), jnp.float32)

    def fixed_batch(key, density, n_features, batch_size, features_first=False):
        t = jax.random.key_data(key)[0].astype(jnp.float32) * 1e-30
        return jnp.where(u0 < density, u0 / density, 0.0) + t

    def matmul_step(state, hp, t):
        W = state["params"]["W"]
        xt = u0 + t.astype(jnp.float32) * 1e-30
        hidden = jnp.einsum("fh,fb->hb", W, xt)
        out = jnp.einsum("fh,hb->fb", W, hidden)
        d_hidden = jnp.einsum("fh,fb->hb", W, out)
        grad = jnp.einsum("fb,hb->fh", xt, d_hidden) + jnp.einsum("fb,hb->fh", out, hidden)
        return {**state, "params": {**state["params"], "W": W - 1e-9 * grad}}, {"loss": grad[0, 0]}

    out = {}
    init, step = exp.make_train(cfg, n, m)
    with mock.patch.object(tms, "make_batch", fixed_batch):  # the real step, its batch swapped
        chunk = make_chunk(step, steps, steps, name="bench-fixed", sharding=sharding, models_per_call=per_call)
        state = jax.jit(jax.vmap(init), out_shardings=sharding)(keys, hp)
        out["fixed_batch_s_per_10k"] = _time_chunk(chunk, state, hp, 0) / steps * 1e4
    chunk = make_chunk(matmul_step, steps, steps, name="bench-matmul", sharding=sharding, models_per_call=per_call)
    state = jax.jit(jax.vmap(init), out_shardings=sharding)(keys, hp)
    out["matmuls_s_per_10k"] = _time_chunk(chunk, state, hp, 0) / steps * 1e4
    return out


def grokking_flops(cfg) -> float:
    """FLOPs one full-batch step's loss needs (forward x 3 for forward + backward).

    Keys and values at all three positions; the query, attention output, MLP and
    unembedding at '=' only, since only its logits enter the loss.
    """
    d, hd, n_train = cfg.d_model, cfg.n_heads * cfg.d_head, int(cfg.frac_train * cfg.p**2)
    per_example = (2 * 3 * 2 * d * hd  # W_K, W_V at 3 positions
                   + 2 * d * hd + 2 * 3 * hd * 2  # W_Q at '='; scores and mixing over 3 keys
                   + 2 * hd * d + 2 * 2 * d * cfg.d_mlp + 2 * d * cfg.p)  # W_O, W_in + W_out, W_U at '='
    return 3 * per_example * n_train


def bench_grokking(rate: float, steps: int) -> dict:
    """The paper preset's compiled chunk (one seed, full batch, test loss every 10 epochs)."""
    from experiments import grokking as exp

    cfg = exp.PRESETS["paper"]
    init, step = exp.make_train(cfg)
    with jax.enable_x64(True):
        sharding = model_sharding(jax.devices()[:1])
        hp = jax.device_put(jax.tree.map(jnp.asarray, exp.seed_data(cfg)), sharding)
        state = jax.jit(jax.vmap(init), out_shardings=sharding)(jax.random.key(0)[None], hp)
        chunk = make_chunk(step, steps, 1, name="bench-grokking")
        t_step = _time_chunk(chunk, state, hp, 100) / steps
    return {"config": f"grokking p={cfg.p} (full batch {int(cfg.frac_train * cfg.p ** 2)})",
            "ms_per_step": t_step * 1e3, "roofline_ms": grokking_flops(cfg) / rate * 1e3,
            "gflop": grokking_flops(cfg) / 1e9, "epochs_min": cfg.n_steps * t_step / 60}


def bench_sweep(rate: float, steps: int) -> dict:
    """The grokking-phases CPU preset's grid as one sweep program, against the same program with weight
    decay a constant (the cost of a per-model field), and as single runs one after another."""
    import dataclasses

    from experiments import grokking as exp
    from toylab import sweep

    cfg = exp.PRESETS["phases"]
    points = sweep.parse(exp.PRESET_SWEEPS["phases"], exp.Config, cfg).points(cfg)
    n = len(points) * cfg.n_seeds
    frac_max = max(p.frac_train for p in points)

    def step_time(points, devices, hp_extra=True) -> float:
        c = points[0]
        init, step = exp.make_train(c)
        hp = exp.seed_data(c, points)
        if hp_extra:
            hp |= sweep.per_model(points, exp.Config.PER_MODEL, c.n_seeds, exclude=("frac_train", "seed"))
        keys = jax.vmap(jax.random.key)(jnp.array([p.seed + s for p in points for s in range(c.n_seeds)]))
        sharding = model_sharding(devices)
        with jax.enable_x64(True):
            hp = jax.device_put(jax.tree.map(jnp.asarray, hp), sharding)
            state = jax.jit(jax.vmap(init), out_shardings=sharding)(keys, hp)
            chunk = make_chunk(step, steps, 1, name="bench-sweep", models_per_call=on_cpu(1), sharding=sharding)
            return _time_chunk(chunk, state, hp, 100) / steps

    t_grid = step_time(points, jax.devices())
    t_same = step_time(points, jax.devices(), hp_extra=False)  # the same padded data, weight decay a constant
    fracs = sorted({p.frac_train for p in points})
    one = {f: step_time([dataclasses.replace(cfg, frac_train=f, n_seeds=1)], jax.devices()[:1]) for f in fracs}
    t_singles = sum(one[p.frac_train] * cfg.n_seeds for p in points)
    flops = n * grokking_flops(dataclasses.replace(cfg, frac_train=frac_max))
    real = np.mean([int(p.frac_train * cfg.p**2) for p in points]) / int(frac_max * cfg.p**2)
    return {"padding": 1 - real, "config": f"sweep: grokking-phases grid ({n} models, p={cfg.p})", "n": n,
            "steps_per_s": 1 / t_grid, "same_steps_per_s": 1 / t_same, "singles_steps_per_s": 1 / t_singles,
            "roofline_steps_per_s": rate / flops, "run_min": cfg.n_steps * t_grid / 60}


def induction_flops_per_token(cfg, n_layers: int) -> float:
    """FLOPs one training token needs in an attention-only model (forward x 3).

    Per layer the four d_model x (heads x d_head) projections, and scores plus mixing
    over the (T + 1) / 2 keys a causal query sees on average; then the unembedding.
    """
    hd = cfg.n_heads * cfg.d_head
    per_layer = 4 * 2 * cfg.d_model * hd + 2 * 2 * hd * (cfg.seq_len + 1) / 2
    return 3 * (n_layers * per_layer + 2 * cfg.d_model * (cfg.n_tokens + 1))


def bench_induction(rate: float, steps: int) -> list[dict]:
    """The paper preset's compiled chunks: 2-layer and 1-layer models, all seeds, as ``train`` runs them
    (sharded over the devices, each device looping over its models one at a time)."""
    from experiments import induction as exp

    cfg = exp.PRESETS["paper"]
    rows = []
    for group, n_layers in exp.GROUPS.items():
        init, step = exp.make_train(cfg, n_layers)
        n = exp.n_models(cfg, group)
        sharding = model_sharding(jax.devices()[:n])
        hp = jax.device_put({"model": jnp.arange(n)}, sharding)
        state = jax.jit(jax.vmap(init), out_shardings=sharding)(exp.group_keys(cfg, group), hp)
        chunk = make_chunk(step, steps, steps, name=f"bench-induction-{group}", models_per_call=on_cpu(1),
                           sharding=sharding)
        t_step = _time_chunk(chunk, state, hp, 0) / steps
        tokens = n * cfg.batch_size * cfg.seq_len
        flops = induction_flops_per_token(cfg, n_layers) * tokens
        rows.append({"config": f"induction {group} x {n} seeds (batch {cfg.batch_size} x {cfg.seq_len})",
                     "tokens_per_s": tokens / t_step, "roofline_tokens_per_s": tokens / (flops / rate),
                     "ms_per_step": t_step * 1e3, "run_min": cfg.n_steps * t_step / 60})
    return rows


def sae_flops(batch: int, d_in: int, d_sae: int) -> float:
    """Matmul FLOPs of one SAE step: encoder and decoder forward, and backward the decoder's two and the
    encoder's weight gradient (the input needs none)."""
    return 5 * 2 * batch * d_in * d_sae


def bench_sae(rate: float, steps: int) -> list[dict]:
    """The paper preset's synthetic grid at d_sae = 2n, one compiled chunk per architecture, as ``train`` runs it
    (every coefficient x seed in one vmapped program, sharded over the devices, one shared batch per step)."""
    from experiments import sae as exp
    from toylab import sae as S

    cfg = exp.PRESETS["paper"]
    G, p = exp.synthetic_truth(cfg)
    G, p = jnp.asarray(G), jnp.asarray(p)
    d_sae = 2 * cfg.n_features
    rows = []
    for arch in cfg.architectures:
        hp = exp._grid(exp.coefficients(cfg, arch), cfg.n_seeds)
        n = len(hp["coefficient"])
        init, step = S.make_train(exp.sae_config(cfg, arch, cfg.d, d_sae),
                                  lambda key, hp, batch: exp.sparse_codes(key, p, batch) @ G, n_steps=cfg.n_steps,
                                  batch_size=cfg.batch_size, lr=cfg.lr, data_key=jax.random.key(0),
                                  grid_axis=MODEL_AXIS)
        sharding = model_sharding(jax.devices()[:n])
        pad = -(-n // sharding.mesh.devices.size) * sharding.mesh.devices.size  # as train_models pads
        hp = jax.device_put(jax.tree.map(lambda a: jnp.concatenate([a, a[: pad - n]]), hp), sharding)
        state = jax.jit(jax.vmap(init), out_shardings=sharding)(jax.random.split(jax.random.key(0), pad), hp)
        # each device steps its SAEs as one batch, as train_saes does (AuxK's choice per device)
        chunk = make_chunk(step, steps, steps, name=f"bench-sae-{arch}", sharding=sharding,
                           models_per_call=on_cpu(pad))
        t_step = _time_chunk(chunk, state, hp, 0) / steps
        flops = sae_flops(cfg.batch_size, cfg.d, d_sae) * n
        rows.append({"config": f"sae {arch} {cfg.n_features} in {cfg.d}, d_sae {d_sae} x {n}",
                     "ms_per_step": t_step * 1e3, "roofline_ms": flops / rate * 1e3, "n": n,
                     "grid_min": cfg.n_steps * t_step / 60})
    return rows


def _naive_batch(key: jax.Array, density: jax.Array, n: int, batch: int) -> jax.Array:
    """The notebook's generator in jax.random: two uniform draws per feature."""
    k1, k2 = jax.random.split(key)
    return jnp.where(jax.random.uniform(k1, (batch, n)) <= density, jax.random.uniform(k2, (batch, n)), 0.0)


def bench_originals(rows: list[dict], grok: dict, sae: list[dict]) -> None:
    """The PyTorch originals' loops on this machine beside ours (``bench_torch``), if torch is installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("PyTorch originals: not timed (torch is not installed; `.venv/bin/pip install torch "
              "--index-url https://download.pytorch.org/whl/cpu` adds them)")
        return
    from experiments import bench_torch

    print(f"the PyTorch originals, same machine, torch on {bench_torch.DEVICE} (experiments/bench_torch.py):")
    for r, (k, n, m) in zip(rows, ((10, 5, 2), (20, 20, 5), (20, 200, 20))):
        torch_s = bench_torch.superposition_step(k, n, m, steps=100 if n < 200 else 30) * 1e4
        print(f"  {r['config']:42s} notebook {torch_s:7.1f} s/10k steps, ours {r['s_per_10k']:6.1f} "
              f"-> {torch_s / r['s_per_10k']:.1f}x faster")
    torch_ms = bench_torch.grokking_step() * 1e3
    print(f"  {grok['config']:42s} paper code {torch_ms:6.1f} ms per epoch, ours {grok['ms_per_step']:5.1f} "
          f"-> {torch_ms / grok['ms_per_step']:.1f}x faster")
    std = next((r for r in sae if r["config"].startswith("sae standard")), None)
    if std is not None:
        torch_ms = bench_torch.sae_step() * 1e3 * std["n"]  # SAELens trains one SAE per run
        print(f"  {std['config']:42s} SAELens loop {torch_ms:6.1f} ms for {std['n']} SAEs one after another, ours "
              f"{std['ms_per_step']:5.1f} -> {torch_ms / std['ms_per_step']:.1f}x faster")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed chunk")
    args = parser.parse_args(argv)
    use_cpu_cores()
    full_float32_matmuls()  # as every experiment trains
    rate = matmul_rate()
    print(f"cpu: {report.cpu()}; devices: {len(jax.devices())} x {jax.devices()[0].device_kind}; "
          f"float32 matmul rate measured here: {rate / 1e9:.0f} GFLOP/s")
    rows = bench_superposition(rate, args.steps)
    head = f"{'configuration':42s} {'s/10k steps':>12s} {'roofline':>9s} {'x roofline':>10s} " \
           f"{'data gen':>9s} {'naive gen':>10s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['config']:42s} {r['s_per_10k']:12.1f} {r['roofline_s_per_10k']:9.1f} "
              f"{r['s_per_10k'] / r['roofline_s_per_10k']:10.1f} {r['data_s_per_10k']:9.1f} "
              f"{r['naive_data_s_per_10k']:10.1f}")
    print("roofline: matmul FLOPs the step needs / measured matmul rate; data gen: the step's random "
          "batch alone; naive gen: two jax.random.uniform draws per feature, as in the notebook")
    r = rows[-1]
    print(f"{r['config']}, where the time goes: the whole step {r['s_per_10k']:.1f} s/10k steps; with a fixed "
          f"batch instead of fresh random numbers {r['fixed_batch_s_per_10k']:.1f}; its five matmuls alone "
          f"{r['matmuls_s_per_10k']:.1f} (roofline {r['roofline_s_per_10k']:.1f})")
    g = bench_grokking(rate, min(args.steps, 100))
    print(f"\n{g['config']}: {g['ms_per_step']:.1f} ms per step, roofline {g['roofline_ms']:.1f} ms "
          f"({g['gflop']:.2f} GFLOP the loss needs) -> {g['ms_per_step'] / g['roofline_ms']:.2f} x roofline; "
          f"40,000 epochs in {g['epochs_min']:.1f} min")
    print("  (timed: the training chunk as run, its test-loss evaluation every 10 epochs included; layer 0 "
          "projects W_E and W_pos rows instead of every input's residual, so it computes fewer FLOPs than counted)")
    print()
    for r in bench_induction(rate, min(args.steps, 100)):
        print(f"{r['config']}: {r['tokens_per_s'] / 1e3:.0f}k tokens/s, roofline {r['roofline_tokens_per_s'] / 1e3:.0f}k "
              f"-> {r['roofline_tokens_per_s'] / r['tokens_per_s']:.1f} x roofline; {r['ms_per_step']:.1f} ms per step, "
              f"the preset's steps in {r['run_min']:.1f} min")
    print()
    sae = bench_sae(rate, min(args.steps, 100))
    for r in sae:
        print(f"{r['config']}: {r['ms_per_step']:.1f} ms per step for the grid, roofline {r['roofline_ms']:.1f} ms "
              f"-> {r['ms_per_step'] / r['roofline_ms']:.1f} x roofline; the preset's steps in {r['grid_min']:.1f} min")
    print()
    sw = bench_sweep(rate, min(args.steps, 100))
    print(f"{sw['config']}: {sw['steps_per_s']:.1f} steps/s for the grid ({sw['steps_per_s'] * sw['n']:.0f} model-steps/s), "
          f"roofline {sw['roofline_steps_per_s']:.1f} -> {sw['roofline_steps_per_s'] / sw['steps_per_s']:.1f} x "
          f"roofline; the preset's epochs in {sw['run_min']:.1f} min")
    print(f"  the same program with weight decay a constant instead of a per-model array: "
          f"{sw['same_steps_per_s']:.1f} steps/s (the per-model field's cost: "
          f"{sw['same_steps_per_s'] / sw['steps_per_s']:.2f}x); as {sw['n']} single runs one after another: "
          f"{sw['singles_steps_per_s']:.1f} steps/s ({sw['steps_per_s'] / sw['singles_steps_per_s']:.1f}x "
          f"the sweep's time, compiling not counted)")
    print(f"  (a sweep over the training fraction pads every model's pairs to the largest set: "
          f"{sw['padding']:.0%} of the training rows are padding, weighted 0, counted in the roofline)")
    print()
    bench_originals(rows, g, sae)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
