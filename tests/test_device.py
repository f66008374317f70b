"""Moving backbones between devices and dtypes."""

from __future__ import annotations

import torch
from nets import MammothStyleNet, TinyNet


def test_to_float64_and_back() -> None:
    net = TinyNet()
    assert net.to(torch.float64) is net
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert net.device == torch.device("cpu")
    x = torch.randn(2, 4, dtype=torch.float64)
    assert net(x).dtype == torch.float64
    assert net.get_params().dtype == torch.float64
    net(x).sum().backward()
    assert net.get_grads().dtype == torch.float64
    net.to(dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_device_follows_every_form_of_to() -> None:
    net = TinyNet()
    assert net.to(torch.zeros(1, device="meta")).device == torch.device("meta")
    assert net.to_empty(device="cpu").device == torch.device("cpu")
    assert net.to("meta", torch.float64, non_blocking=True).device == torch.device("meta")
    assert net.to_empty(device=torch.device("cpu")).device == torch.device("cpu")
    assert net.to(device=torch.device("meta"), dtype=torch.float32).device == torch.device("meta")
    assert net.to(memory_format=torch.channels_last).device == torch.device("meta")


def test_mixed_precision_flat_vectors() -> None:
    net = TinyNet()
    net.stage1.to(torch.float16)
    net.stage2.to(torch.float64)
    flat = net.get_params()
    assert flat.dtype == torch.float64
    assert flat.numel() == sum(p.numel() for p in net.parameters())
    net.set_params(torch.arange(flat.numel(), dtype=torch.float32))
    assert net.stage1.weight.dtype == torch.float16 and net.stage2.weight.dtype == torch.float64
    assert torch.equal(net.get_params().detach(), torch.arange(flat.numel(), dtype=torch.float64))
    assert net.get_grads().dtype == torch.float64
    assert [g.dtype for g in net.get_grads_list()][:2] == [torch.float16, torch.float16]


def test_mammoth_style_to_with_dtype_keeps_device_a_device() -> None:
    net = MammothStyleNet()
    net.to(torch.float64)
    assert isinstance(net.device, torch.device) and net.device.type == "cpu"


def test_meta_device_is_reported() -> None:
    net = TinyNet().to("meta")
    assert net.device == torch.device("meta")
