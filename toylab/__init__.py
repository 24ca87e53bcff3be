"""toylab: JAX toy models for mechanistic interpretability.

The library is small on purpose; each experiment in ``experiments/`` reads top to
bottom and calls into these modules:

- ``toylab.config``: frozen-dataclass configs, presets, validation, the command line.
- ``toylab.experiment``: the stages, run directory and report every experiment shares.
- ``toylab.rng``: a fast counter-based uniform generator used inside training steps.
- ``toylab.train``: chunked ``lax.scan`` training of many models in one vmapped,
  sharded, compiled program, with checkpoints between chunks and exact resume.
- ``toylab.runs``: the run directory (config, final state, snapshots, logs, analysis, a lock).
- ``toylab.checkpoint``: the only module that imports Orbax.
- ``toylab.tms``: the toy model of superposition (data, model, loss, training step).
- ``toylab.sae``: sparse autoencoders (five architectures, SAELens names) and their metrics.
- ``toylab.transformer``: an Equinox transformer with TransformerLens names, shapes and hooks.
- ``toylab.patching``: head ablation and activation patching, a whole grid in one vmap.
- ``toylab.report``: checks against the paper and the run's report.
- ``toylab.plotting``: one matplotlib style and deterministic PNGs.
- ``toylab.analysis``: the papers' measurements (superposition, fourier, attention).
"""

__version__ = "0.1.0"
