"""One training step of EWC-online and A-GEM, written three ways, next to the step without the method.

Each method's flat-vector work is written:

* ``package``: with this package's allocation-free patterns (``out=``
  buffers kept across steps, ``add_grads``, an in-place projection), as the
  docs teach them;
* ``mammoth``: as Mammoth writes it today (aimagelab/mammoth at commit
  20ff873a): ``models/ewc_on.py`` sets the penalty's gradient in closed form
  with ``set_grads`` before the loss's backward; ``models/agem.py`` stores
  and overwrites the gradients with per-parameter loops
  (``models/gem.py``'s ``store_grad`` and ``overwrite_grad``);
* ``torch``: with ``torch.nn.utils.parameters_to_vector`` and
  ``vector_to_parameters`` (for EWC, the penalty built from the vector and
  back-propagated with the loss, as EWC is often written).

The ``floor`` of a method is the step with the same forward and backward
passes and nothing else: the plain step for EWC, the plain step plus the
replay batch's forward and backward for A-GEM. ``tests/test_benchmark.py``
checks that the three ways compute the same update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import backbone

EWC_LAMBDA = 10.0


@dataclass
class Setup:
    """A model, an optimizer, a batch, a replay batch, and the vectors a method keeps between steps."""

    net: nn.Module
    x: Tensor
    y: Tensor
    replay_x: Tensor
    replay_y: Tensor
    optimizer: torch.optim.Optimizer = field(init=False)
    anchor: Tensor = field(init=False)  # EWC: the parameters at the end of the last task
    fisher: Tensor = field(init=False)  # EWC: the running Fisher diagonal
    buffers: dict[str, Tensor] = field(default_factory=dict)  # what a method keeps between steps

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(1)
        n = backbone.get_params(self.net).numel()
        device = self.x.device
        self.anchor = backbone.get_params(self.net).detach() + 0.01 * torch.randn(n, generator=generator).to(device)
        self.fisher = torch.rand(n, generator=generator).to(device)

    def buffer(self, name: str) -> Tensor:
        """A flat vector kept across steps, allocated on first use."""
        if name not in self.buffers:
            self.buffers[name] = torch.empty_like(self.anchor)
        return self.buffers[name]


def make_setup(net: nn.Module, batch: int, device: torch.device, image: tuple[int, ...] = (3, 32, 32)) -> Setup:
    generator = torch.Generator().manual_seed(0)
    net = net.to(device)
    classes = 10
    x, rx = (torch.randn(batch, *image, generator=generator).to(device) for _ in range(2))
    y, ry = (torch.randint(classes, (batch,), generator=generator).to(device) for _ in range(2))
    return Setup(net, x, y, rx, ry)


def _loss(s: Setup, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(s.net(x), y)


# --- the step without any method -------------------------------------------


def plain_step(s: Setup) -> None:
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    s.optimizer.step()


# --- EWC-online: loss + lambda * sum(F * (theta - anchor)^2) ---------------


def ewc_package(s: Setup) -> None:
    """The penalty's gradient, 2 * lambda * F * (theta - anchor), added directly."""
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    delta = backbone.get_params(s.net, out=s.buffer("delta"))
    delta.sub_(s.anchor).mul_(s.fisher)
    backbone.add_grads(s.net, delta, alpha=2 * EWC_LAMBDA)
    s.optimizer.step()


def ewc_mammoth(s: Setup) -> None:
    """Mammoth's models/ewc_on.py observe: the penalty's gradient set with set_grads, then the loss's backward."""
    s.optimizer.zero_grad()
    outputs = s.net(s.x)
    penalty_grads = EWC_LAMBDA * 2 * s.fisher * (backbone.get_params(s.net).data - s.anchor)
    backbone.set_grads(s.net, penalty_grads)
    F.cross_entropy(outputs, s.y).backward()
    s.optimizer.step()


def ewc_torch(s: Setup) -> None:
    """The same penalty, with parameters_to_vector."""
    s.optimizer.zero_grad()
    penalty = (s.fisher * (parameters_to_vector(s.net.parameters()) - s.anchor) ** 2).sum()
    (_loss(s, s.x, s.y) + EWC_LAMBDA * penalty).backward()
    s.optimizer.step()


# --- A-GEM: project the gradient when it disagrees with the replay gradient --
# The benchmark always projects (the costly case); agem_* take always=False
# to project only when the dot product is negative, as A-GEM does.


def agem_floor(s: Setup) -> None:
    """A-GEM's two forward/backward passes and the step, without reading or writing flat vectors."""
    s.optimizer.zero_grad()
    _loss(s, s.replay_x, s.replay_y).backward()
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    s.optimizer.step()


def agem_package(s: Setup, always: bool = True) -> None:
    s.optimizer.zero_grad()
    _loss(s, s.replay_x, s.replay_y).backward()
    reference = backbone.get_grads(s.net, out=s.buffer("reference"))
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    grad = backbone.get_grads(s.net, out=s.buffer("grad"))
    dot = torch.dot(grad, reference)
    if always or dot < 0:
        grad.sub_(reference, alpha=(dot / torch.dot(reference, reference)).item())
        backbone.set_grads(s.net, grad)
    s.optimizer.step()


def _store(params: list[nn.Parameter], out: Tensor) -> None:
    """Mammoth's store_grad: copy each .grad into its slice, zeros where it is None."""
    out.zero_()
    begin = 0
    for p in params:
        end = begin + p.numel()
        if p.grad is not None:
            out[begin:end].copy_(p.grad.view(-1))
        begin = end


def _overwrite(params: list[nn.Parameter], vector: Tensor) -> None:
    """Mammoth's overwrite_grad: copy each slice back into .grad."""
    begin = 0
    for p in params:
        end = begin + p.numel()
        if p.grad is not None:
            p.grad.copy_(vector[begin:end].view_as(p.grad))
        begin = end


def agem_mammoth(s: Setup, always: bool = True) -> None:
    params = list(s.net.parameters())
    s.optimizer.zero_grad()
    _loss(s, s.replay_x, s.replay_y).backward()
    _store(params, s.buffer("reference"))
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    grad = s.buffer("grad")
    _store(params, grad)
    reference = s.buffer("reference")
    dot = torch.dot(grad, reference)
    if always or dot < 0:
        _overwrite(params, grad - reference * (dot / torch.dot(reference, reference)))
    s.optimizer.step()


def agem_torch(s: Setup, always: bool = True) -> None:
    params = list(s.net.parameters())
    s.optimizer.zero_grad()
    _loss(s, s.replay_x, s.replay_y).backward()
    reference = parameters_to_vector(p.grad for p in params)  # type: ignore[misc]
    s.optimizer.zero_grad()
    _loss(s, s.x, s.y).backward()
    grad = parameters_to_vector(p.grad for p in params)  # type: ignore[misc]
    dot = torch.dot(grad, reference)
    if always or dot < 0:
        # Makes each .grad a view of the new vector (it does not copy).
        vector_to_parameters(grad - reference * (dot / torch.dot(reference, reference)), [p.grad for p in params])  # type: ignore[misc]
    s.optimizer.step()


# --- the Fisher diagonal, accumulated once per task --------------------------


def fisher_package(s: Setup) -> None:
    grad = backbone.get_grads(s.net, out=s.buffer("grad"))
    s.fisher.addcmul_(grad, grad)


def fisher_mammoth(s: Setup) -> None:
    s.fisher += backbone.get_grads(s.net) ** 2


STEPS: dict[str, dict[str, Callable[[Setup], None]]] = {
    "EWC-online": {"floor": plain_step, "package": ewc_package, "mammoth": ewc_mammoth, "torch": ewc_torch},
    "A-GEM": {"floor": agem_floor, "package": agem_package, "mammoth": agem_mammoth, "torch": agem_torch},
}
