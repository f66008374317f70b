"""Per-example gradients as rows of flat vectors, and the diagonal Fisher built from them.

:func:`~backbone.per_sample_grads` gives, for a batch, the matrix whose row
``i`` is what :func:`~backbone.get_grads` would read after a backward of
example ``i``'s loss alone; :func:`~backbone.fisher_diagonal` sums squared
per-example gradients of ``log p(y | x)`` (four Fishers, see
:data:`~backbone.FISHER_KINDS`). The module runs with the parameters given
as arguments (:func:`torch.func.functional_call`), in one batched pass where
the model allows it (:mod:`backbone.batched_grads`), else vectorised with
``vmap``, else one example at a time; every way gives the loop's rows, and
nothing of the module changes. The Flat vectors page says what is put back
and where each way applies.

How the module is evaluated: in the mode it is in, with its buffers as they
are, and nothing is written to it: parameters (the objects and their
values), gradients, modes, buffers (the objects and their values), the
random number generator's state and whatever a forward sets as an attribute
of the module or a submodule (a ResNet's pre-activation taps, a counter) are
as they were after the call; lists, dicts and sets held as attributes get
their old items back (a forward that appends features to a list leaves it
as it was). Objects nested deeper, and tensors other than buffers changed in
place, are not restored. Inside ``torch.nn.utils.parametrize.cached()``,
parametrized weights are computed afresh for each example, not taken from
the cache. Batch normalisation in training mode is refused, naming the
layer: its output for one example would depend on the others in the batch
(and on a batch of one, it is undefined). Call ``module.eval()`` first.
Dropout in training mode draws a different mask for each example, as a loop
over examples would (but not the same masks as such a loop); a module that
updates its buffers in training mode (spectral norm's power iteration)
computes from them as they were, and they are put back.

The gradient is the loss's with respect to the parameters *as the forward
uses them*: a ``loss_fn`` that reads the module's parameters itself (an L2
pull towards an anchor) sees them as constants, and hooks registered on the
parameter tensors do not run (hooks on modules do, and see each ``.grad`` as
it was before the call). A model or loss that fails on one example is a
:class:`ValueError` naming the exception it raised.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from . import batched_grads
from ._checks import check_module, check_real
from .layout import Selection, walk
from .models.mlp import MNISTMLP
from .models.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer
from .tuning import SSF, Adapter, LoRA, PromptTokens

__all__ = ["FISHER_KINDS", "fisher_diagonal", "per_sample_grads"]

#: The most elements one chunk of per-example gradients holds when fisher_diagonal picks the chunk size.
_CHUNK_ELEMENTS = 2**27


def per_sample_grads(
    module: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    select: Selection = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The gradient of each example's loss, one flat row per example: ``[batch, selected elements]``.

    Row ``i`` equals what the per-example loop gives::

        module.zero_grad()
        loss_fn(module(inputs[i:i+1]), targets[i:i+1]).backward()
        row_i = get_grads(module)  # restricted to the selection

    so a parameter that does not require a gradient has a zero column, as a
    missing ``.grad`` reads as zeros. The columns follow
    :func:`~backbone.flat_layout` restricted to the selection.

    Args:
        module: the model; its ``forward(x)`` must return what ``loss_fn``
            takes (a backbone's default ``returnt='out'`` gives logits).
        loss_fn: ``loss_fn(output, target)`` for a batch of one, returning a
            scalar, such as :func:`torch.nn.functional.cross_entropy`.
        inputs: the batch ``[B, ...]``.
        targets: the targets ``[B, ...]``, one per example.
        select: which parameters (see :func:`~backbone.selected_parameters`);
            all by default.
        chunk_size: how many examples one vectorised call handles, to bound
            memory; all at once by default. Without effect where the
            examples are taken one at a time.

    Returns:
        A ``[B, P]`` tensor, ``P`` the number of selected elements, in the
        parameters' dtype (promoted when they differ).

    Raises:
        TypeError: an argument is of the wrong type.
        ValueError: ``inputs`` and ``targets`` disagree on the batch size or
            the batch is empty, ``chunk_size`` is not positive, a batch-norm
            layer is in training mode, or the selection is invalid.

    Example:
        >>> import torch
        >>> from torch.nn import functional as F
        >>> from backbone import MNISTMLP, get_grads, per_sample_grads
        >>> net = MNISTMLP(4, 3, hidden_size=5)
        >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> rows = per_sample_grads(net, F.cross_entropy, x, y)
        >>> rows.shape
        torch.Size([6, 73])
        >>> net.zero_grad()
        >>> F.cross_entropy(net(x[2:3]), y[2:3]).backward()
        >>> torch.allclose(rows[2], get_grads(net), atol=1e-6)
        True
    """
    names, params = _prepare(module, inputs, targets, select, chunk_size)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

    slots = _slots(module)
    buffers = _inference_buffers(module)

    def example_loss(x: Tensor, y: Tensor, differentiated: dict[str, Tensor], fixed: dict[str, Tensor]) -> Tensor:
        out = _call(module, slots, {**fixed, **differentiated}, x, buffers)
        return _scalar(loss_fn(out, y.unsqueeze(0)))

    def batch_losses(out: Any, y: Tensor) -> tuple[Tensor, None]:
        # The loss of each example alone, from the batch's output: what loss_fn gives for a batch of one.
        return torch.stack([_scalar(loss_fn(out[i : i + 1], y[i : i + 1])) for i in range(y.shape[0])]), None

    rows = torch.zeros(inputs.shape[0], sum(p.numel() for p in params), dtype=_dtype(params), device=_device(params))
    start = 0
    chunks = _rows(module, names, params, example_loss, inputs, targets, chunk_size, with_aux=False, batch=batch_losses)
    for count, grads, _, _ in chunks:
        offset = 0
        for name, p in zip(names, params, strict=True):
            if name in grads:
                rows[start : start + count, offset : offset + p.numel()] = grads[name].reshape(count, -1)
            offset += p.numel()
        start += count
    return rows


FISHER_KINDS: tuple[str, ...] = ("mammoth", "empirical", "true", "sampled")
"""The Fishers :func:`~backbone.fisher_diagonal` computes (its ``kind``).

Example:
    >>> from backbone import FISHER_KINDS
    >>> FISHER_KINDS
    ('mammoth', 'empirical', 'true', 'sampled')
"""


def fisher_diagonal(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    kind: str | None = None,
    weight_by_probability: bool = True,
    reduction: str = "mean",
    select: Selection = None,
    chunk_size: int | None = None,
    into: Tensor | None = None,
    decay: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The diagonal Fisher of a classifier over a data loader, as a flat vector.

    With ``g(x, c)`` the gradient of ``log p(c | x)`` (``log_softmax`` of
    ``module(x)`` at class ``c``), each example ``(x, y)`` adds:

    * ``kind='mammoth'``: ``p(y | x) * g(x, y) ** 2``, what Mammoth's
      ``models/ewc_on.py`` accumulates in ``end_task`` (the default);
    * ``kind='empirical'``: ``g(x, y) ** 2``, the empirical Fisher;
    * ``kind='true'``: ``sum_c p(c | x) * g(x, c) ** 2``, the Fisher itself,
      the expectation over the model's own predictive distribution, exact
      over the classes (one gradient per class and example);
    * ``kind='sampled'``: ``g(x, c) ** 2`` for one class ``c`` drawn from
      ``p(. | x)`` with ``generator`` (the labels are not used).

    ``weight_by_probability`` is the older way to choose between the first
    two (``False`` is ``'empirical'``). The sum is divided by the number of
    examples (``reduction='mean'``) or not (``'sum'``). Online EWC keeps a
    running Fisher: pass it as ``into`` and it becomes ``decay * into +
    fisher``, in place. The gradients are computed as
    :func:`per_sample_grads` computes them (one batched pass where the model
    allows it), and the module is left as it was.

    Args:
        module: the classifier; ``module(x)`` gives logits ``[B, C]``.
        loader: an iterable of batches, each ``(inputs, targets, ...)``
            (further items, such as Mammoth's non-augmented inputs, are
            ignored).
        kind: which Fisher, out of :data:`~backbone.FISHER_KINDS`.
        weight_by_probability: ``False`` for the empirical Fisher, when
            ``kind`` is not given.
        reduction: ``'mean'`` or ``'sum'`` over the examples.
        select: which parameters; all by default (the layout of
            :func:`~backbone.get_params`).
        chunk_size: examples per vectorised call; by default as many as keep
            a chunk of per-example gradients under 2**27 elements.
        into: a running Fisher to update in place.
        decay: the factor ``into`` is multiplied by first.
        generator: the random numbers ``kind='sampled'`` draws its labels
            with; the global generator when None.

    Returns:
        The Fisher, detached: a new vector in the parameters' dtype, or
        ``into`` itself (in its own dtype) when given.

    Raises:
        TypeError: an argument is of the wrong type, or a batch is not a
            sequence of at least inputs and targets.
        ValueError: the loader yields no example, ``kind`` or ``reduction``
            is unknown, ``kind`` disagrees with ``weight_by_probability``,
            ``into`` has the wrong shape, or as :func:`per_sample_grads`.

    Example:
        >>> import torch
        >>> from backbone import MNISTMLP, fisher_diagonal
        >>> net = MNISTMLP(4, 3, hidden_size=5).eval()
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
        >>> fisher = fisher_diagonal(net, data)
        >>> fisher.shape, bool((fisher >= 0).all())
        (torch.Size([73]), True)
        >>> online = fisher_diagonal(net, data, into=fisher.clone(), decay=0.5)
        >>> torch.allclose(online, 1.5 * fisher)
        True
        >>> true = fisher_diagonal(net, data, kind="true")
        >>> true.shape
        torch.Size([73])
    """
    module = check_module(module)
    if not isinstance(weight_by_probability, bool):
        raise TypeError(f"weight_by_probability must be a bool, got {type(weight_by_probability).__name__}")
    if kind is None:
        kind = "mammoth" if weight_by_probability else "empirical"
    elif kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, FISHER_KINDS))}, got {kind!r}")
    elif not weight_by_probability and kind != "empirical":
        raise ValueError(f"weight_by_probability=False asks for the empirical Fisher, but kind={kind!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    decay = check_real(decay, "decay")
    try:
        finite = math.isfinite(float(decay))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"decay must be a finite number, got {decay!r}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"loader must be an iterable of (inputs, targets, ...) batches, got {type(loader).__name__}")
    names, params = walk(module, select)
    select = list(names)  # resolved once: an iterator of names is read here, not again for each batch
    shapes = [p.shape for p in params]
    total_size = sum(p.numel() for p in params)
    dtype = _dtype(params)
    if into is not None:
        if not isinstance(into, Tensor):
            raise TypeError(f"into must be a torch.Tensor, got {type(into).__name__}")
        if into.layout != torch.strided or not (into.dtype.is_floating_point or into.dtype.is_complex):
            raise TypeError(f"into must be a dense floating-point tensor, got {into.dtype} with layout {into.layout}")
        if into.shape != (total_size,):
            raise ValueError(
                f"into must have shape ({total_size},), one element per selected element, got {tuple(into.shape)}"
            )
        _check_into(module, into)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(1, total_size))

    slots = _slots(module)
    buffers = _inference_buffers(module)

    def log_likelihood(
        x: Tensor, y: Tensor, differentiated: dict[str, Tensor], fixed: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        logits = _call(module, slots, {**fixed, **differentiated}, x, buffers)
        _check_logits(logits, 1)
        log_p = F.log_softmax(logits, dim=1)[0].gather(0, y.reshape(1))[0]
        return log_p, log_p.detach()

    def batch_log_likelihoods(out: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_logits(out, y.shape[0])
        log_p = F.log_softmax(out, dim=1).gather(1, y[:, None])[:, 0]
        return log_p, log_p.detach()

    weighted = kind in ("mammoth", "true")

    def weigh(log_p: Tensor | None) -> Tensor:
        return cast(Tensor, log_p).exp() if weighted else torch.ones_like(cast(Tensor, log_p))

    fisher = torch.zeros(total_size, dtype=dtype, device=_device(params))
    seen = 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"each batch must be a sequence (inputs, targets, ...), got {type(batch).__name__}")
        inputs, targets = batch[0], batch[1]
        _prepare(module, inputs, targets, select, chunk_size)
        if (
            targets.dim() != 1
            or targets.dtype.is_floating_point
            or targets.dtype.is_complex
            or targets.dtype == torch.bool
        ):
            raise TypeError(
                f"fisher_diagonal needs targets as class indices, an integer tensor [B], got {targets.dtype} "
                f"of shape {tuple(targets.shape)}"
            )
        now = walk(module, select)[1]
        if [p.shape for p in now] != shapes:
            raise ValueError("the selected parameters changed shape while the loader ran; expected a fixed model")
        examples = inputs.shape[0]
        targets = targets.long()
        if kind in ("true", "sampled"):
            probabilities = _probabilities(module, slots, buffers, inputs)
            if kind == "true":  # every class of every example, weighted by its probability
                classes = probabilities.shape[1]
                inputs = inputs.repeat_interleave(classes, dim=0)
                targets = torch.arange(classes, device=targets.device).repeat(examples)
            else:
                drawn = torch.multinomial(probabilities.to(_generator_device(generator)), 1, generator=generator)
                targets = drawn[:, 0].to(targets.device)
        chunks = _rows(
            module,
            names,
            params,
            log_likelihood,
            inputs,
            targets,
            chunk_size,
            with_aux=True,
            batch=batch_log_likelihoods,
            weigh=weigh,
        )
        for count, grads, log_p, squared in chunks:
            weights = weigh(log_p)
            offset = 0
            for name, p in zip(names, params, strict=True):
                if name in grads:  # each parameter's part of the sum in place, with no row of the whole model
                    part = fisher[offset : offset + p.numel()]
                    if squared:
                        part.add_(grads[name].reshape(-1).to(device=fisher.device, dtype=fisher.dtype))
                    else:
                        g = grads[name].reshape(count, -1).to(device=fisher.device, dtype=fisher.dtype)
                        if count == 1:
                            part.addcmul_(g[0], g[0], value=float(weights[0]))
                        else:
                            part.addmv_(g.square().T, weights.to(device=g.device, dtype=g.dtype))
                offset += p.numel()
        seen += examples
    if seen == 0:
        raise ValueError("loader yielded no example; expected at least one batch")
    if reduction == "mean":
        fisher /= seen
    if into is None:
        return fisher
    with torch.no_grad():
        into.mul_(decay).add_(fisher.to(into.dtype).to(into.device))
    return into


def _check_logits(logits: object, batch: int) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"fisher_diagonal needs module(x) to be logits [{batch}, C] for {batch} examples, got {got}")


def _probabilities(
    module: nn.Module, slots: list[tuple[str, str]], buffers: dict[str, Tensor], inputs: Tensor
) -> Tensor:
    """``softmax(module(inputs))`` for the batch, the module left as it was (for the true and sampled Fishers)."""
    every_names, every_params = walk(module)
    values = dict(zip(every_names, (_normal(p) for p in every_params), strict=True))
    devices = _cuda(dict(zip(every_names, every_params, strict=True)))
    with (
        _left_as_it_was(module),
        torch.random.fork_rng(devices=devices, device_type="cuda"),
        torch.inference_mode(False),
        torch.no_grad(),
    ):
        x = inputs.clone() if inputs.is_inference() else inputs
        mapping = {slot: values[name] for slot, name in slots} | buffers
        try:
            logits = functional_call(module, mapping, (x,), tie_weights=False, strict=False)
        except Exception as error:
            raise ValueError(f"the model failed on the batch: {type(error).__name__}: {error}") from error
        _check_logits(logits, inputs.shape[0])
        if logits.shape[1] == 0 or not bool(torch.isfinite(logits).all()):
            raise ValueError(
                "fisher_diagonal needs finite logits over at least one class to weigh or draw classes by, got "
                f"shape {tuple(logits.shape)} with {int((~torch.isfinite(logits)).sum())} values not finite"
            )
        return F.softmax(logits.float(), dim=1)


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


# --- the pass over the examples ----------------------------------------------


def _prepare(
    module: nn.Module, inputs: object, targets: object, select: Selection, chunk_size: object
) -> tuple[list[str], list[nn.Parameter]]:
    """Check everything before any work; return the selection."""
    module = check_module(module)
    names, params = walk(module, select)
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    for what, t in (("inputs", inputs), ("targets", targets)):
        if t.layout != torch.strided or t.is_nested:
            got = "a nested tensor" if t.is_nested else f"layout {t.layout}"
            raise TypeError(f"{what} must be a dense (strided) tensor, got {got}")
    if inputs.dim() == 0 or targets.dim() == 0:
        raise ValueError("inputs and targets must have a batch dimension, got a scalar")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must have one row per example, got {inputs.shape[0]} inputs and "
            f"{targets.shape[0]} targets"
        )
    if inputs.shape[0] == 0:
        raise ValueError("the batch is empty; expected at least one example")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            raise ValueError(
                f"{type(sub).__name__} {name!r} is in training mode, where one example's output depends on the "
                "rest of the batch; expected the module in eval mode (call module.eval() first)"
            )
    return names, params


def _rows(
    module: nn.Module,
    names: list[str],
    params: list[nn.Parameter],
    example_fn: Callable[..., Any],
    inputs: Tensor,
    targets: Tensor,
    chunk_size: int | None,
    *,
    with_aux: bool,
    batch: BatchLosses | None = None,
    weigh: Callable[[Tensor | None], Tensor] | None = None,
) -> Iterator[tuple[int, dict[str, Tensor], Tensor | None, bool]]:
    """Each example's gradients, a chunk of examples at a time: ``(examples, {name: [examples, *shape]}, aux)``.

    Only parameters that require a gradient have an entry. A chunk is ``chunk_size`` examples where the
    batch is vectorised or taken in one batched pass (``batch`` gives the per-example losses from the
    batch's output; see :mod:`backbone.batched_grads` for where it applies), one where the examples are
    taken one by one, so that a caller that only sums them (the Fisher) never holds the whole batch's
    gradients.
    """
    # Autograd runs even when the caller is in torch.inference_mode(): the gradients are computed as outside it
    # (an input made there is cloned into a normal tensor, which autograd can save). Only the computation leaves
    # inference mode, never the caller's code between chunks.
    with torch.inference_mode(False):
        differentiated = {name: _normal(p) for name, p in zip(names, params, strict=True) if p.requires_grad}
        # Every other parameter enters as a constant, under its flat-order name; buffers are the module's own.
        every_names, every_params = walk(module)
        fixed = {
            name: _normal(p) for name, p in zip(every_names, every_params, strict=True) if name not in differentiated
        }
        if inputs.is_inference():
            inputs = inputs.clone()
        if targets.is_inference():
            targets = targets.clone()
    batched = None
    trained = {id(p) for name, p in zip(every_names, every_params, strict=True) if name in differentiated}
    if batch is not None and differentiated and batched_grads.applies(module, _PER_EXAMPLE_MODELS, trained, (LoRA,)):
        batched = _batched_chunks(module, differentiated, fixed, batch, trained)
    one_by_one = functools.partial(_one_by_one, example_fn, with_aux)
    vectorised = None
    if _vectorises_well(module):
        # Nothing to differentiate: the rows are zeros, but the model and the loss still run.
        one = grad(example_fn, argnums=2, has_aux=with_aux) if differentiated else example_fn
        vectorised = vmap(one, in_dims=(0, 0, None, None), randomness="different")
    with (
        warnings.catch_warnings(),
        _left_as_it_was(module) as put_back,
        _parametrizations_uncached(),
        torch.random.fork_rng(devices=_cuda(differentiated | fixed), device_type="cuda"),
    ):
        # torch.func runs attention without a batching rule one example at a time, and says so on every call.
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        start = 0
        while start < inputs.shape[0]:
            if batched is not None:
                stop = start + (chunk_size or inputs.shape[0])
                x, y = inputs[start:stop], targets[start:stop]
                try:
                    with torch.inference_mode(False), torch.enable_grad():
                        grads, aux = batched(x, y, weigh)
                except Exception:
                    # As for a failed vectorised attempt: undone, and the examples taken another way, which
                    # names the example and the reason when the model or the loss fails.
                    put_back()
                    batched = None
                    continue
                yield x.shape[0], grads, aux, weigh is not None
                start += x.shape[0]
                continue
            if vectorised is not None:
                stop = start + (chunk_size or inputs.shape[0])
                x, y = inputs[start:stop], targets[start:stop]
                try:
                    with torch.inference_mode(False):
                        result = vectorised(x, y, differentiated, fixed)
                except Exception:
                    # torch.func cannot run everything the loop can (a buffer updated in place, a backward hook on
                    # a module), and a model that fails fails the same way one example at a time, which names the
                    # reason best. The failed attempt leaves nothing behind for the loop.
                    put_back()
                    vectorised = None
                    continue
            else:
                x, y = inputs[start : start + 1], targets[start : start + 1]
                try:
                    with torch.inference_mode(False):
                        result = one_by_one(x, y, differentiated, fixed)
                except Exception as error:
                    raise ValueError(
                        f"the model or the loss failed on one example (example {start} of the batch): "
                        f"{type(error).__name__}: {error}"
                    ) from error
            aux = cast(Tensor, result[1]) if with_aux else None
            grads = cast(dict[str, Tensor], result[0] if with_aux else result) if differentiated else {}
            yield x.shape[0], grads, aux, False
            start += x.shape[0]


BatchLosses = Callable[[Any, Tensor], tuple[Tensor, "Tensor | None"]]
"""``(batch output, targets) -> (per-example losses [B], aux [B] or None)``."""

#: The package's models whose forward keeps the examples of a batch apart (checked for the batched way).
_PER_EXAMPLE_MODELS: tuple[type[nn.Module], ...] = (
    MNISTMLP,
    VisionTransformer,
    Block,
    Attention,
    Mlp,
    PatchEmbed,
    nn.Conv2d,
    Adapter,
    SSF,
    PromptTokens,
)


def _batched_chunks(
    module: nn.Module,
    differentiated: dict[str, Tensor],
    fixed: dict[str, Tensor],
    batch_losses: BatchLosses,
    owned: set[int],
) -> Callable[[Tensor, Tensor, Callable[[Tensor | None], Tensor] | None], tuple[dict[str, Tensor], Tensor | None]]:
    """A function computing one chunk in one batched forward and backward (see :mod:`.batched_grads`).

    It gives ``({name: rows [B, *shape]}, aux)``, or with ``weigh`` (aux to
    weights ``[B]``) ``{name: weighted sum of squared rows [*shape]}``.
    """
    slots, buffers = _slots(module), _inference_buffers(module)
    with torch.inference_mode(False):
        # Fresh leaves (hooks on the module's own parameter tensors do not run, as on the other ways).
        leaves = {name: t.detach().requires_grad_() for name, t in differentiated.items()}
    values = {slot: {**fixed, **leaves}[name] for slot, name in slots} | buffers
    names = {id(t): name for name, t in leaves.items()}
    wanted: set[nn.Module] = {
        m
        for m in module.modules()
        if isinstance(m, nn.Linear | nn.LayerNorm | LoRA) and any(id(p) in owned for p in m.parameters(recurse=False))
    }

    def chunk(
        x: Tensor, y: Tensor, weigh: Callable[[Tensor | None], Tensor] | None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        records, grads, aux = batched_grads.run(module, values, x, wanted, lambda out: batch_losses(out, y))
        found = (
            batched_grads.per_example(records, grads)
            if weigh is None
            else batched_grads.squared_sums(records, grads, weigh(aux))
        )
        out: dict[str, Tensor] = {}
        for leaf, value in found:
            name = names.get(id(leaf))
            if name is not None:  # a frozen weight beside a trainable bias has no column
                out[name] = value if name not in out else out[name] + value
        for name, leaf in leaves.items():  # a parameter the loss does not reach: zeros, as the loop gives
            if name not in out:
                shape = (*(() if weigh is not None else (x.shape[0],)), *leaf.shape)
                out[name] = torch.zeros(shape, dtype=leaf.dtype, device=leaf.device)
        return out, aux

    return chunk


def _cuda(tensors: dict[str, Tensor]) -> list[torch.device]:
    return sorted({t.device for t in tensors.values() if t.device.type == "cuda"}, key=str)


def _vectorises_well(module: nn.Module) -> bool:
    """Whether ``vmap`` is the faster way here: every layer with parameters is linear.

    Both ways compute the same rows. ``vmap``'s batched backward through
    convolutions and attention is slower on CPU than one ``grad`` per
    example (measured in ``benchmarks/flat_ops.py``), so those models take
    the loop.
    """
    return all(isinstance(m, nn.Linear) for m in module.modules() if any(True for _ in m.parameters(recurse=False)))


def _one_by_one(
    example_fn: Callable[..., Any],
    with_aux: bool,
    inputs: Tensor,
    targets: Tensor,
    differentiated: dict[str, Tensor],
    fixed: dict[str, Tensor],
) -> Any:
    """What ``vmap(grad(example_fn))`` returns for a chunk of one example, computed with plain autograd.

    The parameters enter as fresh leaves (detached from the module's own, so
    hooks on those do not run, as under ``torch.func``), and a parameter the
    loss does not reach gets zeros, as ``torch.func.grad`` gives. torch.func's
    transform costs more per example than the forward and backward of a small
    convolution or attention layer on the CPU; plain autograd does not.
    """
    (x,), (y,) = inputs, targets
    leaves = {name: t.detach().requires_grad_() for name, t in differentiated.items()}
    with torch.enable_grad():
        out = example_fn(x, y, leaves, fixed)
        loss = out[0] if with_aux else out
        found = (
            torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            if leaves and loss.requires_grad
            else (None,) * len(leaves)
        )
    # A sparse embedding's gradient reads as its dense value, as get_grads reads a sparse .grad.
    grads = {
        name: (torch.zeros_like(leaf) if g is None else g if g.layout == torch.strided else g.to_dense()).unsqueeze(0)
        for (name, leaf), g in zip(leaves.items(), found, strict=True)
    }
    return (grads, out[1].detach().unsqueeze(0)) if with_aux else grads


def _scalar(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar for a batch of one example, got {shape}")
    if not (loss.dtype.is_floating_point or loss.dtype.is_complex):
        raise ValueError(f"loss_fn must return a floating-point scalar to differentiate, got {loss.dtype}")
    return loss.reshape(())


def _slots(module: nn.Module) -> list[tuple[str, str]]:
    """Every parameter slot once: a name that reaches it, and the flat-order name of the parameter it holds.

    A submodule used in two places has one slot under two names, and must be
    swapped once; two slots that hold one parameter (tied weights) must both
    receive the same tensor.
    """
    slots: list[tuple[str, str]] = []
    seen: set[tuple[int, str]] = set()
    first: dict[int, str] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for attr, p in sub._parameters.items():
            if p is None or (id(sub), attr) in seen:
                continue
            seen.add((id(sub), attr))
            name = f"{prefix}.{attr}" if prefix else attr
            slots.append((name, first.setdefault(id(p), name)))
    return slots


def _call(
    module: nn.Module, slots: list[tuple[str, str]], values: dict[str, Tensor], x: Tensor, buffers: dict[str, Tensor]
) -> Any:
    """``module(x[None])`` with each slot holding the value of its parameter (and ``buffers`` in place of those)."""
    mapping = {slot: values[name] for slot, name in slots} | buffers
    return functional_call(module, mapping, (x.unsqueeze(0),), tie_weights=False, strict=False)


def _inference_buffers(module: nn.Module) -> dict[str, Tensor]:
    """Normal copies of the buffers made under ``torch.inference_mode()``, which autograd cannot save."""
    with torch.inference_mode(False):
        return {name: b.clone() for name, b in module.named_buffers() if b.is_inference()}


def _normal(t: Tensor) -> Tensor:
    """``t`` detached, as a normal tensor: a copy if it was made under ``torch.inference_mode()``."""
    return t.detach().clone() if t.is_inference() else t.detach()


@contextlib.contextmanager
def _parametrizations_uncached() -> Iterator[None]:
    """Compute parametrized tensors afresh on each access, even inside ``torch.nn.utils.parametrize.cached()``.

    The cache would hand every example the weight computed from the first
    example's parameters. It is switched off (torch keeps the switch in a
    private counter) and back on, its entries untouched.
    """
    from torch.nn.utils import parametrize

    enabled = getattr(parametrize, "_cache_enabled", None)
    if not enabled:
        yield
        return
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = enabled


_CONTAINERS = (list, dict, set)


def _items(value: list[Any] | dict[Any, Any] | set[Any]) -> list[Any]:
    """A container's items (the same objects): a dict's as (key, value) pairs."""
    return list(value.items()) if isinstance(value, dict) else list(value)


def _refill(value: list[Any] | dict[Any, Any] | set[Any], items: list[Any]) -> None:
    if isinstance(value, list):
        value[:] = items
    else:
        value.clear()
        value.update(items)


@contextlib.contextmanager
def _left_as_it_was(module: nn.Module) -> Iterator[Callable[[], None]]:
    """Put back what a forward writes onto the module and its submodules.

    Every attribute, ``__slots__`` included: one the forward sets is given
    its old object back (one it adds is removed, one it deletes returns), and the lists, dicts and
    sets held as attributes (a module's parameter, buffer and submodule
    tables among them) get their old items back. Buffer values changed in
    place are copied back. The context gives the function that puts it all
    back, for a caller that must undo a failed attempt before going on.
    """
    modules = list(module.modules())
    kept = [dict(vars(m)) for m in modules]
    slotted = [(m, descriptor, _slot_value(m, descriptor)) for m in modules for descriptor in _slot_descriptors(m)]
    contents = [{key: _items(v) for key, v in before.items() if isinstance(v, _CONTAINERS)} for before in kept]
    buffers = [
        (b, b.detach().clone()) for b in module.buffers() if b.layout == torch.strided and b.device.type != "meta"
    ]

    def put_back() -> None:
        for m, before, inside in zip(modules, kept, contents, strict=True):
            now = vars(m)
            for key in [key for key in now if key not in before]:
                del now[key]
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    now[key] = value
                if key in inside:
                    _refill(value, inside[key])
        for m, descriptor, value in slotted:
            if value is _MISSING:
                if _slot_value(m, descriptor) is not _MISSING:
                    descriptor.__delete__(m)
            elif _slot_value(m, descriptor) is not value:
                descriptor.__set__(m, value)
        with torch.no_grad():
            for b, value in buffers:
                if not torch.equal(b, value):
                    b.copy_(value)

    try:
        yield put_back
    finally:
        put_back()


_MISSING = object()


def _slot_descriptors(m: nn.Module) -> list[Any]:
    """The descriptors of the ``__slots__`` a module's classes declare: attributes kept outside its ``__dict__``."""
    found = []
    for cls in type(m).__mro__:
        names = cls.__dict__.get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{cls.__name__.lstrip('_')}{name}"  # Python stores a private slot under its mangled name
            descriptor = cls.__dict__.get(name)
            if all(hasattr(descriptor, method) for method in ("__get__", "__set__", "__delete__")):
                found.append(descriptor)
    return found


def _slot_value(m: nn.Module, descriptor: Any) -> Any:
    try:
        return descriptor.__get__(m, type(m))
    except AttributeError:
        return _MISSING


def _check_into(module: nn.Module, into: Tensor) -> None:
    """Refuse an ``into`` that cannot be updated in place, before any work."""
    if into.device.type == "meta":
        raise ValueError("into is on the meta device and holds no data; expected a tensor with data")
    if into.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError("into is an inference tensor and cannot be updated outside inference mode; pass a clone")
    if into.numel() > 1 and into.stride(0) == 0:
        raise ValueError("into must own each of its elements, got an expanded tensor (stride 0); pass a clone")
    storage = into.untyped_storage().data_ptr()
    for name, p in module.named_parameters():
        for t in (p, p.grad):
            if t is not None and t.layout == torch.strided and t.untyped_storage().data_ptr() == storage:
                raise ValueError(f"into must not share memory with the model, but it shares {name!r}'s storage")


def _dtype(params: list[nn.Parameter]) -> torch.dtype:
    dtypes = {p.dtype for p in params}
    if not dtypes:
        return torch.get_default_dtype()
    return functools.reduce(torch.promote_types, dtypes)


def _device(params: list[nn.Parameter]) -> torch.device:
    return params[0].device if params else torch.device("cpu")
