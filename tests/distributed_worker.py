"""One rank of the two-process CPU test in test_distributed.py (gloo, loopback only).

Run as ``python distributed_worker.py RANK PORT OUT``; writes what it found to OUT as JSON.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import backbone


def gathered(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def main(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    found: dict[str, object] = {}
    torch.manual_seed(0)  # the same initial weights on both ranks
    net = backbone.MNISTMLP(8, 3, hidden_size=6)
    single = copy.deepcopy(net)
    ddp = DistributedDataParallel(net)
    x, y = batch(100 + rank)  # each rank its own data

    # DDP averages the gradient: identical on both ranks, the mean of the single-process ones.
    F.cross_entropy(ddp(x), y).backward()
    g_ddp = backbone.unwrap(ddp).get_grads()
    found["unwrap_is_the_backbone"] = backbone.unwrap(ddp) is net
    with torch.no_grad():  # a forward with grad and no backward would leave DDP's reducer waiting
        found["returnt_through_ddp"] = list(ddp(x, returnt="features").shape)
    F.cross_entropy(single(x), y).backward()
    g_single = single.get_grads()
    found["ddp_identical_on_ranks"] = bool(torch.equal(*gathered(g_ddp)))
    found["ddp_is_the_average"] = bool(torch.allclose(g_ddp, sum(gathered(g_single)) / 2, atol=1e-6))
    found["single_differs_across_ranks"] = not torch.equal(*gathered(g_single))

    # One collective for the whole model: all_reduce a get_grads() vector, then set_grads.
    flat = single.get_grads()
    dist.all_reduce(flat)
    single.set_grads(flat / 2)
    found["allreduce_equals_ddp"] = bool(torch.allclose(single.get_grads(), g_ddp, atol=1e-6))
    torch.optim.SGD(single.parameters(), lr=0.5).step()
    found["replicas_identical_after_step"] = bool(torch.equal(*gathered(single.get_params().detach())))

    # A-GEM's reference gradient: inside no_sync it is the rank's own, and the replicas drift apart.
    memory_x, memory_y = batch(200 + rank)
    ddp.zero_grad()
    with ddp.no_sync():
        F.cross_entropy(ddp(memory_x), memory_y).backward()
    reference = backbone.unwrap(ddp).get_grads()
    found["no_sync_reference_differs"] = not torch.equal(*gathered(reference))
    dist.all_reduce(reference)  # done right: average it, one collective
    reference /= 2
    found["averaged_reference_identical"] = bool(torch.equal(*gathered(reference)))

    # FSDP: flat vectors of a sharded model are refused, naming FSDP.
    from torch.distributed.fsdp import fully_shard

    sharded = backbone.MNISTMLP(8, 3, hidden_size=6)
    fully_shard(sharded)
    try:
        backbone.get_grads(sharded)
        found["fsdp_refused"] = ""
    except TypeError as error:
        found["fsdp_refused"] = str(error)
    F.cross_entropy(sharded(x), y).backward()  # the model itself still trains
    found["fsdp_trains"] = all(p.grad is not None and bool(p.grad.ne(0).any()) for p in sharded.parameters())

    with open(out, "w") as file:
        json.dump(found, file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
