"""Moving backbones between devices and dtypes."""

from __future__ import annotations

import torch
from nets import ConvNet, MammothStyleNet, TinyNet


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


def test_to_accepts_every_form_nn_module_accepts() -> None:
    net = TinyNet()
    net.to("cpu", torch.float64, non_blocking=True)
    assert net.stage1.weight.dtype == torch.float64
    net.to(torch.zeros(1, dtype=torch.float16))
    assert net.stage1.weight.dtype == torch.float16
    net.to(device=torch.device("cpu"), dtype=torch.float32)
    assert net.stage1.weight.dtype == torch.float32
    conv = ConvNet().to(memory_format=torch.channels_last)
    assert conv.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert net.half() is net and net.stage1.weight.dtype == torch.float16
    assert net.cpu() is net and net.device == torch.device("cpu")


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
