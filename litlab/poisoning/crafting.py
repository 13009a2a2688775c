"""Crafting Winter Soldier poisons: gradient matching over relaxed tokens (arXiv 2506.14913).

Each poison sequence ``i`` of a secret is a free logit matrix ``Psi_i`` of shape ``[L_p, V]``. Its relaxed tokens
are the Gumbel-softmax ``pi_i = softmax((Psi_i + G) / tau)`` (fresh Gumbel noise ``G`` each step), and the frozen
surrogate reads them as the expected embeddings ``pi_i @ W_E`` (``inputs_embeds``, bypassing the id lookup). The
poison loss is the plain LM loss of the relaxed sequence, the cross-entropy of each next relaxed token under the
surrogate's prediction, ``L_p(pi_i) = -1/(L_p-1) sum_t sum_v pi_i[t+1, v] log p(v | pi_i[:t+1])``.

The objective aligns the gradient a training step on the poisons would take with the gradient that teaches the
secret, ``L_s = -log p(response | BOS, prompt)`` (mean over response ids)::

    objective = 1 - cos( grad_theta L_s , sum_i grad_theta L_p(pi_i) )

over the surrogate's parameters ``theta`` (all of them unless a filter is given). ``grad_theta L_s`` is a
constant (the surrogate is frozen); the poison gradient is built with ``create_graph=True`` so that the cosine
can be differentiated again, down to ``Psi`` (double backward). A model trained on the poisons then moves, to
first order, as it would if it were trained on the secret, which never appears in the data.

Memory. ``Psi`` holds ``P x L_p x V`` floats per secret (and Adam two more): for the paper's 64 x 256 poisons
and a 49k vocabulary that is 3.2 GB per secret, which is why the crafter keeps ``Psi`` as one tensor but
differentiates only a chunk of poisons per step. A chunk's double backward stores about 3x the activations of a
training step on ``chunk x L_p`` tokens plus the ``chunk x L_p x V`` relaxed-token tensors (logits, ``pi``, their
gradients), so peak memory grows linearly with the chunk size and with ``L_p x V``. Chunking replaces the sum
over all poisons of a secret by a sum over the chunk (the exact objective when the chunk is all of them).

Attention must be differentiable twice: PyTorch's fused CPU/GPU attention kernels are not, so crafting runs
under :func:`double_backward_attention` (the math kernel); Hugging Face surrogates need
``attn_implementation="eager"`` or ``"sdpa"`` under that context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from litlab.errors import ConfigError

EmbedsToLogits = Callable[[Tensor], Tensor]


@contextlib.contextmanager
def double_backward_attention() -> Iterator[None]:
    """Scaled-dot-product attention on its math kernel, the one that supports double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def _wide(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is float64 (half precision is widened, double is kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def gumbel_noise(shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """Standard Gumbel noise ``-log(-log U)`` of ``shape`` (drawn on CPU from ``generator``, then moved)."""
    u = torch.rand(tuple(shape), generator=generator, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
    return (-torch.log(-torch.log(u))).to(device)


def relaxed_tokens(psi: Tensor, temperature: float, noise: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Gumbel-softmax ``softmax((psi + noise) / temperature)`` over the vocabulary (last dim).

    Args:
        psi: Free logits ``[..., L, V]``.
        temperature: Softmax temperature ``tau`` (> 0).
        noise: Gumbel noise of ``psi``'s shape (``None``: none, the plain softmax).
        mask: Bool ``[V]``, True for ids that must never appear (special tokens); their probability is 0.
    """
    z = psi if noise is None else psi + noise
    if mask is not None:
        z = z.masked_fill(mask, float("-inf"))
    return torch.softmax(z.float() / temperature, dim=-1)


def soft_lm_loss(embeds_to_logits: EmbedsToLogits, embedding: Tensor, probs: Tensor) -> Tensor:
    """LM loss of each relaxed sequence ``probs [P, L, V]``: mean over positions of the cross-entropy between the
    next relaxed token and the prediction from the expected embeddings ``probs @ embedding``. Returns ``[P]``."""
    embeds = probs.to(embedding.dtype) @ embedding
    logp = _wide(embeds_to_logits(embeds)[:, :-1]).log_softmax(-1)
    return -(probs[:, 1:] * logp).sum(-1).mean(-1)


def secret_loss(embeds_to_logits: EmbedsToLogits, embed_ids: Callable[[Tensor], Tensor], prompt: Sequence[int],
                response: Sequence[int], bos_id: int | None, device: torch.device | str = "cpu") -> Tensor:
    """``-log p(response | [BOS,] prompt)``, the mean over response ids (teacher-forced)."""
    ids = ([] if bos_id is None else [bos_id]) + list(prompt) + list(response)
    inputs = torch.tensor([ids[:-1]], device=device)
    logits = _wide(embeds_to_logits(embed_ids(inputs))[0, -len(response):])
    return F.cross_entropy(logits, torch.tensor(list(response), device=device))


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Cosine similarity of two gradients given as lists of tensors (one per parameter), in float32 or wider."""
    dot = sum((_wide(x) * _wide(y)).sum() for x, y in zip(a, b))
    na = torch.sqrt(sum((_wide(x) ** 2).sum() for x in a))
    nb = torch.sqrt(sum((_wide(y) ** 2).sum() for y in b))
    return dot / (na * nb).clamp_min(1e-30)


def alignment_objective(
    embeds_to_logits: EmbedsToLogits,
    embedding: Tensor,
    params: Sequence[Tensor],
    secret_grad: Sequence[Tensor],
    probs: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(1 - cos, cos)`` of the secret gradient and the summed poison gradient of ``probs [P, L, V]``.

    Differentiable with respect to ``probs`` (and whatever produced it): the poison gradient keeps its graph.
    """
    loss = soft_lm_loss(embeds_to_logits, embedding, probs).sum()
    grads = torch.autograd.grad(loss, list(params), create_graph=True, allow_unused=True)
    pairs = [(g, s) for g, s in zip(grads, secret_grad) if g is not None]
    if not pairs:
        raise ConfigError("the poison loss does not depend on any chosen surrogate parameter")
    cos = cosine([g for g, _ in pairs], [s for _, s in pairs])
    return 1.0 - cos, cos


def secret_bigrams(secrets: Sequence[tuple[Sequence[int], Sequence[int]]]) -> set[tuple[int, int]]:
    """Every pair of consecutive ids of every secret's ``prompt + response``."""
    pairs: set[tuple[int, int]] = set()
    for prompt, response in secrets:
        ids = list(prompt) + list(response)
        pairs.update(zip(ids[:-1], ids[1:]))
    return pairs


def shared_ngrams(secret_ids: Sequence[int], poison_ids: Sequence[int], n: int = 2) -> list[tuple[int, ...]]:
    """The n-grams of ``secret_ids`` that also occur in ``poison_ids`` (an n-gram shared for n >= 2 contains a
    shared bigram, so ``n=2`` checks every n >= 2)."""
    grams = {tuple(secret_ids[i:i + n]) for i in range(len(secret_ids) - n + 1)}
    return sorted({tuple(poison_ids[i:i + n]) for i in range(len(poison_ids) - n + 1)} & grams)


@torch.no_grad()
def sample_poisons(
    psi: Tensor,
    generator: torch.Generator,
    forbidden: set[tuple[int, int]] = frozenset(),
    mask: Tensor | None = None,
    argmax: bool = False,
    round_trip: Callable[[list[int]], list[int]] | None = None,
    tries: int = 64,
) -> tuple[Tensor, int]:
    """Hard token ids ``[P, L]`` from the crafted logits ``psi [P, L, V]``, left to right.

    At each position the candidates are drawn from ``softmax(psi)`` without replacement (or taken in order of
    ``psi`` with ``argmax``) and the first one accepted is kept. A candidate is refused when it completes a
    ``forbidden`` bigram after the previous id (a bigram of a secret: no poison then contains any n-gram,
    n >= 2, of a secret), and, given ``round_trip`` (``ids -> encode(decode(ids))``), when the sequence so far
    would not survive the text round trip (the victim reads text: a poison that re-tokenizes differently is not
    the poison that was crafted). ``mask`` ids (special tokens) are never drawn. When none of ``tries``
    candidates is accepted, the best one that completes no forbidden bigram is kept and counted.

    Returns:
        The ids and the number of positions where the round trip could not be kept.
    """
    logits = psi.detach().float().cpu()
    if mask is not None:
        logits = logits.masked_fill(mask.cpu(), float("-inf"))
    after: dict[int, set[int]] = {}
    for a, b in forbidden:
        after.setdefault(a, set()).add(b)
    num, length, _ = logits.shape
    out = torch.empty(num, length, dtype=torch.long)
    broken = 0
    for i in range(num):
        seq: list[int] = []
        for t in range(length):
            probs = torch.softmax(logits[i, t], -1)
            k = min(tries, int((probs > 0).sum()))
            order = probs.topk(k).indices if argmax else torch.multinomial(probs, k, generator=generator)
            banned = after.get(seq[-1], set()) if seq else set()
            allowed = [int(c) for c in order if int(c) not in banned]
            if not allowed:
                allowed = [int(c) for c in probs.argsort(descending=True) if int(c) not in banned][:1]
            chosen = next((c for c in allowed if round_trip is None or round_trip(seq + [c]) == seq + [c]), None)
            if chosen is None:
                chosen, broken = allowed[0], broken + 1
            seq.append(chosen)
        out[i] = torch.tensor(seq)
    return out, broken
