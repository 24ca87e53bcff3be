"""The PyTorch originals' training steps, timed on this machine beside ours (``make bench``).

PyTorch is not a dependency of the lab; ``make bench`` runs this part when torch is
installed in ``.venv`` (``.venv/bin/pip install torch``, the CPU build) and says so
when it is not. The brief's bar is to be faster than the original code on the same
machine, so these are the originals' loops, ported line for line, not our models
rewritten in torch:

- superposition: the training loop of Anthropic's ``toy_models.ipynb``
  (Elhage et al. 2022): ``n_instances`` models in one ``einsum`` model, two ``torch.rand`` draws per
  feature every step, AdamW (torch defaults), loss summed over instances;
- grokking: the paper code's one-layer transformer (Nanda et al. 2023):
  its ``Embed``/``Attention``/``MLP`` einsums, full batch, float64 cross-entropy,
  AdamW with betas (0.9, 0.98), weight decay 1 and the 10-step warm-up, and the test
  loss (which the original computes every epoch; here every ``eval_every`` epochs,
  as our chunk does, so both time the same work);
- sae: SAELens' standard-SAE training loop (``sae_step``), one SAE per run as SAELens
  trains them, on the synthetic activations of ``experiments/sae.py``.

Each returns seconds per step: the best of three timed runs after a warm-up, with
torch's default threads (one per core), on the GPU when torch sees one (as the originals ran),
in float32 (PyTorch's default: no TensorFloat-32 in matmuls).
"""

import functools
import time

import numpy as np
import torch
from torch import nn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on_device(fn):
    """Run ``fn`` with ``DEVICE`` as the default device of every tensor it and its step create."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.device(DEVICE):
            return fn(*args, **kwargs)

    return wrapped


def _sync() -> None:
    if DEVICE.type == "cuda":  # kernels run asynchronously: time them to the end
        torch.cuda.synchronize()


def _best_time(step, steps: int, warmup: int = 10, repeats: int = 3) -> float:
    for _ in range(warmup):
        step(0)
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


@_on_device
def superposition_step(n_instances: int, n_features: int, n_hidden: int, batch_size: int = 1024,
                       steps: int = 100) -> float:
    """Seconds per step of the notebook's loop, densities ``20 ** -linspace(0, 1, n_instances)``."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.empty((n_instances, n_features, n_hidden)))
    nn.init.xavier_normal_(W)
    b_final = nn.Parameter(torch.zeros((n_instances, n_features)))
    feature_probability = (20 ** -torch.linspace(0, 1, n_instances))[:, None]
    importance = torch.ones(())
    opt = torch.optim.AdamW([W, b_final], lr=1e-3)

    def step(_: int) -> None:
        feat = torch.rand((batch_size, n_instances, n_features))
        batch = torch.where(torch.rand((batch_size, n_instances, n_features)) <= feature_probability,
                            feat, torch.zeros(()))
        hidden = torch.einsum("...if,ifh->...ih", batch, W)
        out = torch.relu(torch.einsum("...ih,ifh->...if", hidden, W) + b_final)
        error = importance * (batch.abs() - out) ** 2
        loss = error.mean(dim=(0, 2)).sum()  # einops.reduce(error, 'b i f -> i', 'mean').sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _best_time(step, steps)


class _GrokTransformer(nn.Module):
    """The paper code's one-layer transformer: no LayerNorm, MLP biases only, its init."""

    def __init__(self, p: int, d_model: int, n_heads: int, d_head: int, d_mlp: int):
        super().__init__()
        d_vocab, s = p + 1, d_model ** -0.5
        self.n_heads, self.d_head = n_heads, d_head
        self.W_E = nn.Parameter(torch.randn(d_model, d_vocab) * s)
        self.W_pos = nn.Parameter(torch.randn(3, d_model) * s)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_head, d_model) * s)
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_head, d_model) * s)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_head, d_model) * s)
        self.W_O = nn.Parameter(torch.randn(d_model, d_head * n_heads) * s)
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model) * s)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp) * s)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab) / d_vocab ** 0.5)
        self.register_buffer("mask", torch.tril(torch.ones((3, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resid = torch.einsum("dbp->bpd", self.W_E[:, x]) + self.W_pos[: x.shape[-1]]
        k = torch.einsum("ihd,bpd->biph", self.W_K, resid)
        q = torch.einsum("ihd,bpd->biph", self.W_Q, resid)
        v = torch.einsum("ihd,bpd->biph", self.W_V, resid)
        scores = torch.einsum("biph,biqh->biqp", k, q)
        scores = torch.tril(scores) - 1e10 * (1 - self.mask)
        attn = torch.softmax(scores / self.d_head ** 0.5, dim=-1)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z = z.permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[2], -1)
        resid = resid + torch.einsum("df,bqf->bqd", self.W_O, z)
        hidden = torch.relu(torch.einsum("md,bpd->bpm", self.W_in, resid) + self.b_in)
        resid = resid + torch.einsum("dm,bpm->bpd", self.W_out, hidden) + self.b_out
        return resid @ self.W_U


def _cross_entropy_high_precision(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -torch.gather(logprobs, index=labels[:, None], dim=-1).mean()


@_on_device
def grokking_step(p: int = 113, frac_train: float = 0.3, d_model: int = 128, n_heads: int = 4, d_head: int = 32,
                  d_mlp: int = 512, eval_every: int = 10, steps: int = 50) -> float:
    """Seconds per epoch (one full-batch step, and the test loss every ``eval_every``)."""
    torch.manual_seed(0)
    pairs = np.array([(a, b, p) for a in range(p) for b in range(p)])
    order = np.random.RandomState(0).permutation(len(pairs))
    n_train = int(frac_train * len(pairs))
    train, test = (torch.as_tensor(pairs[order[:n_train]], device=DEVICE),
                   torch.as_tensor(pairs[order[n_train:]], device=DEVICE))
    train_labels, test_labels = (train[:, 0] + train[:, 1]) % p, (test[:, 0] + test[:, 1]) % p
    model = _GrokTransformer(p, d_model, n_heads, d_head, d_mlp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 10, 1))

    def step(i: int) -> None:
        loss = _cross_entropy_high_precision(model(train)[:, -1], train_labels)
        if i % eval_every == 0:
            with torch.no_grad():
                _cross_entropy_high_precision(model(test)[:, -1], test_labels)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return _best_time(step, steps)


@_on_device
def sae_step(n_features: int = 128, d: int = 64, d_sae: int = 256, batch_size: int = 128, mean_active: float = 5.0,
             decay: float = 0.99, l1_coefficient: float = 0.1, steps: int = 100) -> float:
    """Seconds per step of one standard SAE, SAELens' training loop written plainly.

    SAELens trains one SAE per run: fresh synthetic activations (Sharkey et al.'s
    features, as ``experiments/sae.py`` draws them), pre-encoder bias, ReLU, squared
    error summed over d_in plus lambda L1, the gradient parallel to each decoder row
    removed, Adam, decoder rows renormalised after the step (SAELens' ``standard``
    SAE before its April-2024 update).
    """
    torch.manual_seed(0)
    G = torch.randn(n_features, d)
    G /= G.norm(dim=-1, keepdim=True)
    w = decay ** torch.arange(n_features, dtype=torch.float32)
    p = (mean_active * w / w.sum()).clamp(max=1.0)
    W_dec = torch.randn(d_sae, d)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_dec = nn.Parameter(W_dec)
    W_enc = nn.Parameter(W_dec.detach().T.clone())
    b_enc, b_dec = nn.Parameter(torch.zeros(d_sae)), nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3, betas=(0.9, 0.999))

    def step(_: int) -> None:
        u = torch.rand(batch_size, n_features)
        x = torch.where(u < p, u / p, torch.zeros(())) @ G
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        loss = ((x_hat - x) ** 2).sum(-1).mean() + l1_coefficient * f.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # SAELens' remove_gradient_parallel_to_decoder_directions
            normed = W_dec / W_dec.norm(dim=-1, keepdim=True)
            W_dec.grad -= (W_dec.grad * normed).sum(-1, keepdim=True) * normed
        opt.step()
        with torch.no_grad():  # set_decoder_norm_to_unit_norm
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))

    return _best_time(step, steps)
