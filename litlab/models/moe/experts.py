"""Expert MLPs stored as stacked weights, one slice per expert.

Layout (per expert, nn.Linear's ``[out, in]``):
  * ``fc1_weight`` [E, H1, dim] with ``H1 = hidden`` for GELU and ``H1 = 2 * hidden`` for SwiGLU,
    ``fc1_bias`` [E, H1] (or None);
  * ``fc2_weight`` [E, dim, hidden], ``fc2_bias`` [E, dim] (or None).

SwiGLU convention: the first ``hidden`` rows of fc1 are the *gate* and the last ``hidden`` rows the *value*
("up"): ``silu(gate) * up``. This is timm's ``SwiGLU`` with ``fc1 = cat([fc1_g, fc1_x])``, timm's
``SwiGLUPacked`` (``GluMlp(gate_last=False)``) and Mixtral's ``gate_up_proj`` as they are. timm's default
``GluMlp`` (``gate_last=True``) keeps the gate in the *second* half: swap the halves before loading it.
GELU is the exact (erf) GELU of ``torch.nn.GELU()``, as in timm's ``Mlp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litlab.errors import ConfigError

ACTIVATIONS = ("gelu", "swiglu")


def init_uniform_(param: Tensor, bound: float, generator: torch.Generator | None = None) -> None:
    """Fill ``param`` with U(-bound, bound) drawn on the CPU (from ``generator`` or the global RNG).

    Drawing on the CPU makes a seeded init identical on every device; meta tensors are left alone.
    """
    if param.is_meta:
        return
    with torch.no_grad():
        values = torch.rand(param.shape, generator=generator, dtype=torch.float32, device="cpu")
        param.copy_(values.mul_(2.0 * bound).sub_(bound))


def activation_forward(h: Tensor, activation: str, out: Tensor | None = None) -> Tensor:
    """``gelu(h)`` or ``silu(gate) * up`` (gate: first half of the last dim), written into ``out`` if given."""
    if activation == "gelu":
        return F.gelu(h) if out is None else torch.ops.aten.gelu.out(h, out=out)
    gate, up = h.chunk(2, dim=-1)
    if out is None:
        return F.silu(gate) * up
    torch.ops.aten.silu.out(gate, out=out)
    return out.mul_(up)


def activation_backward(grad: Tensor, h: Tensor, activation: str) -> Tensor:
    """Gradient with respect to the pre-activation ``h`` given the gradient of :func:`activation_forward`."""
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(grad, h)
    gate, up = h.chunk(2, dim=-1)
    hidden = gate.shape[-1]
    gh = torch.empty_like(h)
    torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=gh[..., :hidden])
    torch.ops.aten.silu.out(gate, out=gh[..., hidden:])
    gh[..., hidden:].mul_(grad)
    return gh


class Experts(nn.Module):
    """``num_experts`` independent MLPs ``fc2(act(fc1(x)))`` with stacked weights.

    Args:
        num_experts: Number of experts E.
        dim: Input and output width.
        hidden_dim: Hidden width of *each* expert.
        activation: ``"gelu"`` (exact erf GELU) or ``"swiglu"`` (``silu(gate) * up``).
        bias: Whether the two linear layers have biases.
    """

    def __init__(
        self, num_experts: int, dim: int, hidden_dim: int, activation: str = "gelu", bias: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation={activation!r} is not allowed; choose one of {ACTIVATIONS}")
        self.num_experts, self.dim, self.hidden_dim, self.activation = num_experts, dim, hidden_dim, activation
        fc1_out = 2 * hidden_dim if activation == "swiglu" else hidden_dim
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, fc1_out, dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc1_bias: nn.Parameter | None
        self.fc2_bias: nn.Parameter | None
        self.register_parameter("fc1_bias", nn.Parameter(torch.empty(num_experts, fc1_out)) if bias else None)
        self.register_parameter("fc2_bias", nn.Parameter(torch.empty(num_experts, dim)) if bias else None)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None, identical: bool = False) -> None:
        """Each expert like a fresh dense ``nn.Linear`` pair of its own shape: U(+-1/sqrt(fan_in)).

        Args:
            generator: CPU generator for the draws (None: global RNG).
            identical: Draw one expert and copy it into all (otherwise every expert is drawn independently).
        """
        n = 1 if identical else self.num_experts
        for weight, bias, fan_in in (
            (self.fc1_weight, self.fc1_bias, self.dim),
            (self.fc2_weight, self.fc2_bias, self.hidden_dim),
        ):
            for p in (weight, bias):
                if p is None:
                    continue
                bound = 1.0 / math.sqrt(fan_in)
                one = torch.empty((n, *p.shape[1:]))
                init_uniform_(one, bound, generator)
                if not p.is_meta:
                    with torch.no_grad():
                        p.copy_(one.expand_as(p))

    def activate(self, h: Tensor) -> Tensor:
        """The hidden non-linearity on fc1's output (last dim H1)."""
        return activation_forward(h, self.activation)

    @property
    def params_per_expert(self) -> int:
        """Number of parameters of one expert."""
        params = (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)
        return sum(p[0].numel() for p in params if p is not None)

    @torch.no_grad()
    def load_dense(
        self,
        fc1_weight: Tensor,
        fc1_bias: Tensor | None,
        fc2_weight: Tensor,
        fc2_bias: Tensor | None,
        split: bool = False,
    ) -> None:
        """Copy a dense MLP (nn.Linear layout) into the experts ("upcycling").

        Args:
            fc1_weight: [Hd, dim] for GELU, [2 * Hd, dim] for SwiGLU (gate rows first, then value rows).
            fc1_bias: [Hd] or [2 * Hd], or None (zeros).
            fc2_weight: [dim, Hd].
            fc2_bias: [dim] or None (zeros).
            split: False: every expert gets the whole MLP (``Hd == hidden_dim``). True: ``Hd == E * hidden_dim``
                and expert e gets hidden units ``[e * hidden_dim, (e + 1) * hidden_dim)`` (for SwiGLU the same
                units of the gate half and of the value half) and ``fc2_bias / E``, so that the sum of all
                experts' outputs is exactly the dense MLP's output.
        """
        E, h, glu = self.num_experts, self.hidden_dim, self.activation == "swiglu"
        hd = E * h if split else h
        g = 2 if glu else 1
        expected = {
            "fc1_weight": (g * hd, self.dim),
            "fc1_bias": (g * hd,),
            "fc2_weight": (self.dim, hd),
            "fc2_bias": (self.dim,),
        }
        given = {"fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight, "fc2_bias": fc2_bias}
        for name, t in given.items():
            if t is None:
                continue
            if tuple(t.shape) != expected[name]:
                what = f"{'SwiGLU (gate and value halves)' if glu else 'GELU'}, dim={self.dim}, dense hidden={hd}"
                raise ConfigError(
                    f"load_dense: {name} has shape {tuple(t.shape)}, expected {expected[name]} ({what})"
                )
            if name.endswith("bias") and getattr(self, name) is None and bool((t != 0).any()):
                raise ConfigError(f"load_dense: {name} is given (non-zero) but this MoE was built with bias=False")

        def per_expert_rows(w: Tensor) -> Tensor:  # [g * hd, ...] -> [E, g * h, ...]
            halves = w.reshape(g, hd, *w.shape[1:])
            if split:
                halves = halves.reshape(g, E, h, *w.shape[1:]).transpose(0, 1)
            else:
                halves = halves.unsqueeze(0).expand(E, *halves.shape)
            return halves.reshape(E, g * h, *w.shape[1:])

        self.fc1_weight.copy_(per_expert_rows(fc1_weight))
        if split:
            self.fc2_weight.copy_(fc2_weight.reshape(self.dim, E, h).permute(1, 0, 2))
        else:
            self.fc2_weight.copy_(fc2_weight.unsqueeze(0).expand_as(self.fc2_weight))
        if self.fc1_bias is not None:
            if fc1_bias is None:
                self.fc1_bias.zero_()
            else:
                self.fc1_bias.copy_(per_expert_rows(fc1_bias))
        if self.fc2_bias is not None:
            if fc2_bias is None:
                self.fc2_bias.zero_()
            else:
                self.fc2_bias.copy_((fc2_bias / E if split else fc2_bias).unsqueeze(0).expand_as(self.fc2_bias))
