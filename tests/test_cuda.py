"""GPU tests: run by ``tox -e py311-cuda``, where a missing GPU is an error."""

from __future__ import annotations

import pytest
import torch
from nets import MammothStyleNet, TiedFrozenUnused, TinyNet

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda", 0) if torch.cuda.is_available() else None


def numel(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_device_follows_moves() -> None:
    net = TinyNet()
    assert net.to(CUDA).device == CUDA
    assert net.cpu().device == torch.device("cpu")
    assert net.cuda().device == CUDA
    mammoth = MammothStyleNet().to(CUDA)
    assert mammoth.device == CUDA
    assert mammoth(torch.randn(2, 8, device=CUDA)).device == CUDA


@pytest.mark.parametrize("source", ["cpu", "cuda"])
def test_set_params_on_cuda(source: str) -> None:
    net = TiedFrozenUnused().cuda()
    target = torch.arange(numel(net), dtype=torch.float64, device=source)
    net.set_params(target)
    assert all(p.device == CUDA and p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.get_params().detach().cpu(), target.float().cpu())
    target.add_(1)
    assert torch.equal(net.get_params().detach().cpu(), (target - 1).float().cpu())


@pytest.mark.parametrize("source", ["cpu", "cuda"])
def test_set_grads_on_cuda(source: str) -> None:
    net = TiedFrozenUnused().cuda()
    target = torch.arange(numel(net), dtype=torch.float32, device=source)
    net.set_grads(target)
    assert all(p.grad is not None and p.grad.device == CUDA for p in net.parameters())
    assert torch.equal(net.get_grads().cpu(), target.cpu())


def test_get_params_and_grads_on_cuda() -> None:
    net = TiedFrozenUnused().cuda()
    net(torch.randn(3, 4, device=CUDA)).sum().backward()
    params, grads = net.get_params(), net.get_grads()
    assert params.device == CUDA and grads.device == CUDA
    expected = torch.cat(
        [torch.zeros(p.numel(), device=CUDA) if p.grad is None else p.grad.reshape(-1) for p in net.parameters()]
    )
    assert torch.equal(grads, expected)
    assert torch.equal(torch.cat(net.get_grads_list()), grads)


@pytest.mark.parametrize("out_device", ["cpu", "cuda"])
def test_out_buffers_on_either_device(out_device: str) -> None:
    net = TinyNet().cuda()
    net(torch.randn(3, 4, device=CUDA)).sum().backward()
    out = torch.full((numel(net),), float("nan"), device=out_device)
    grads = torch.cat([p.grad.flatten() for p in net.parameters()]).cpu()
    params = torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()
    assert net.get_grads(out=out) is out and out.device.type == out_device
    assert torch.equal(out.cpu(), grads)
    assert net.get_params(out=out) is out and torch.equal(out.cpu(), params)


def test_ewc_penalty_on_cuda() -> None:
    net = TinyNet().cuda()
    anchor = net.get_params().detach() - 1.0
    ((net.get_params() - anchor) ** 2).sum().backward()
    torch.testing.assert_close(net.get_grads(), torch.full((numel(net),), 2.0, device=CUDA))


def test_get_grads_list_on_cuda_is_a_copy() -> None:
    net = TiedFrozenUnused().cuda()
    net(torch.randn(3, 4, device=CUDA)).sum().backward()
    grads = net.get_grads_list()
    assert all(g.device == CUDA and g.dim() == 1 for g in grads)
    for g in grads:
        g.fill_(123.0)
    assert all(p.grad is None or not bool((p.grad == 123.0).all()) for p in net.parameters())


def test_mixed_dtypes_on_cuda() -> None:
    net = TinyNet().cuda()
    net.stage1.half()
    net.set_params(torch.arange(numel(net), dtype=torch.float32))
    assert net.stage1.weight.dtype == torch.float16
    assert torch.equal(net.get_params().detach().cpu(), torch.arange(numel(net), dtype=torch.float32))
    net.set_grads(torch.ones(numel(net)))
    assert [g.dtype for g in net.get_grads_list()][:2] == [torch.float16, torch.float16]
