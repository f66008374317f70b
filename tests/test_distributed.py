"""DistributedDataParallel and FSDP on the CPU: two gloo processes on the loopback, bounded in time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    out = tmp_path_factory.mktemp("ranks")
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(port), str(out / f"{rank}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            proc.kill()
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(2)]


FACTS = [
    "unwrap_is_the_backbone",
    "ddp_identical_on_ranks",
    "ddp_is_the_average",
    "single_differs_across_ranks",
    "allreduce_equals_ddp",
    "replicas_identical_after_step",
    "no_sync_reference_differs",
    "averaged_reference_identical",
    "fsdp_trains",
]


@pytest.mark.parametrize("fact", FACTS)
def test_on_both_ranks(ranks: list[dict[str, object]], fact: str) -> None:
    assert [found[fact] for found in ranks] == [True, True]


def test_returnt_goes_through_ddp(ranks: list[dict[str, object]]) -> None:
    assert [found["returnt_through_ddp"] for found in ranks] == [[6, 6], [6, 6]]


def test_fsdp_sharded_flat_vectors_are_refused_naming_fsdp(ranks: list[dict[str, object]]) -> None:
    for found in ranks:
        message = found["fsdp_refused"]
        assert isinstance(message, str) and "sharded by FSDP (DTensor)" in message and "fc1.weight" in message
