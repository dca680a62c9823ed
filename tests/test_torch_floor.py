"""The oldest torch we declare is the one scripts/check_torch_floor.sh tests, and what the code does
where that torch lacks a newer API: data-parallel replicas start from rank 0's weights and buffers,
and a forward leaves each process's buffers its own, with DDP's forward_sync_buffers (torch 2.13)
or without it."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from packaging.requirements import Requirement
from packaging.version import Version
from runs import REPO
from torch import nn

import ssam.train.distributed as distributed
from ssam.train.distributed import Replicas

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the TOML reader pytest itself depends on
    import tomli as tomllib

# The tests share a module fixture (two processes per DDP API): under pytest-xdist, one worker.
pytestmark = pytest.mark.xdist_group("test_torch_floor")
PROCESSES = 2


def declared_lower_bounds() -> dict[str, Version]:
    """pyproject.toml's lower bound of each dependency that has one."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        for specifier in requirement.specifier:
            if specifier.operator == ">=":
                bounds[requirement.name] = Version(specifier.version)
    return bounds


def floor_in_script(variable: str) -> Version:
    script = (REPO / "scripts" / "check_torch_floor.sh").read_text()
    return Version(re.search(rf"^{variable}=(\S+)$", script, re.MULTILINE).group(1))


@pytest.mark.parametrize(
    ("package", "variable"), [("torch", "TORCH_FLOOR"), ("torchvision", "TORCHVISION_FLOOR")]
)
def test_the_declared_floor_is_the_tested_floor(package, variable):
    assert declared_lower_bounds()[package] == floor_in_script(variable)


def wrap_and_forward(rank: int, forward_sync_buffers: bool, out: Path) -> None:
    """One of two processes: its own weights and BatchNorm statistics, wrapped, then one forward
    after each process has set statistics of its own. Saves what it holds after each."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=(out / "rendezvous").as_uri(),
        rank=rank,
        world_size=PROCESSES,
        timeout=timedelta(seconds=60),
    )
    torch.manual_seed(rank)
    # momentum 0: a forward leaves the running statistics as it finds them.
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.0))
    model[1].running_mean.fill_(rank)
    with mock.patch.object(distributed, "DDP_HAS_FORWARD_SYNC_BUFFERS", forward_sync_buffers):
        wrapped = Replicas(rank=rank, world_size=PROCESSES).wrap(model)
    wrapped_state = {name: value.clone() for name, value in model.state_dict().items()}
    model[1].running_mean.fill_(10 + rank)
    wrapped(torch.randn(5, 3))
    torch.save({"wrapped": wrapped_state, "after_forward": model[1].running_mean}, out / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(True, id="forward_sync_buffers"),
        pytest.param(False, id="broadcast_buffers"),
    ],
)
def two_wrapped_processes(request, tmp_path_factory) -> list[dict]:
    """What each of two processes held after wrapping and after a forward, with either DDP API."""
    if request.param and not distributed.DDP_HAS_FORWARD_SYNC_BUFFERS:
        pytest.skip(f"torch {torch.__version__} has no forward_sync_buffers")
    out = tmp_path_factory.mktemp("two_wrapped_processes")
    torch.multiprocessing.spawn(wrap_and_forward, args=(request.param, out), nprocs=PROCESSES)
    return [torch.load(out / f"{rank}.pt") for rank in range(PROCESSES)]


def test_wrapped_replicas_start_from_rank_0_s_weights_and_buffers(two_wrapped_processes):
    main, other = (process["wrapped"] for process in two_wrapped_processes)
    assert main.keys() == other.keys()
    for name in main:
        assert torch.equal(main[name], other[name]), name
    assert torch.equal(other["1.running_mean"], torch.zeros(4))


def test_a_forward_leaves_each_process_its_own_buffers(two_wrapped_processes):
    for rank, process in enumerate(two_wrapped_processes):
        assert torch.equal(process["after_forward"], torch.full((4,), 10.0 + rank))
