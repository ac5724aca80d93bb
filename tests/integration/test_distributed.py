"""Data-parallel correctness of the losses that gather batch statistics (group_dro, ltkd).

The test launches this file under ``torchrun --nproc_per_node 2`` (gloo, CPU): each rank
holds an unequal shard of one batch, runs the loss under DDP, and writes the DDP-averaged
gradient and the rank-averaged loss. They must equal a single process on the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.losses import LossContext, build_loss
from compression.spec import MitigationSpec
from tests.integration.conftest import JOB_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
SHARDS = (slice(0, 3), slice(3, 8))  # unequal on purpose: rank 0 has 3 rows, rank 1 has 5
SPECS = {
    "group_dro": MitigationSpec(name="group_dro", alpha=0.6, temperature=2.0,
                                params={"beta": 0.7}),
    "ltkd": MitigationSpec(name="ltkd", alpha=0.8, temperature=2.0,
                           params={"prior": "batch", "num_groups": 2}),
    "ltkd_train_prior": MitigationSpec(name="ltkd", alpha=0.8, temperature=2.0,
                                       params={"prior": "train"}),
}


def batch() -> tuple[torch.Tensor, ...]:
    """x [8, 6], labels [8], teacher logits [8, 4], groups [8] (group 2 only in shard 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    teacher = 3 * torch.randn(8, 4, generator=g)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 0, 0])
    return x, y, teacher, groups


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(6, 4)


def loss(name: str):
    holdout = Split(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.zeros(1).long(),
                    torch.zeros(1).long())
    context = LossContext(4, 3, ("g0", "g1", "g2"), [10, 5, 2, 1], holdout=holdout)
    built = build_loss(SPECS[name], context)
    if name == "group_dro":  # weights away from uniform, as after some epochs
        built.load_state_dict({"group_weights": torch.tensor([0.2, 0.3, 0.5],
                                                             dtype=torch.float64)})
    return built


def value_and_grads(net: nn.Module, name: str, rows: slice) -> tuple[torch.Tensor, list]:
    x, y, teacher, groups = batch()
    net.zero_grad()
    out = loss(name)(net(x[rows]), y[rows], teacher[rows], groups[rows])
    out.backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def worker(out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    net = DistributedDataParallel(model())
    results = {}
    for name in SPECS:
        value, grads = value_and_grads(net, name, SHARDS[rank])
        dist.all_reduce(value)  # the convention: the rank average is the global loss
        results[name] = {"value": value / world, "grads": grads}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(tmp_path)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in SPECS:
        value, grads = value_and_grads(model(), name, slice(0, 8))
        for rank in ranks:
            got = rank[name]
            assert torch.allclose(got["value"], value, atol=1e-5), name
            for g_dist, g_full in zip(got["grads"], grads):
                assert torch.allclose(g_dist, g_full, atol=1e-5), name
        assert grads[0].abs().sum() > 0


if __name__ == "__main__":
    worker(sys.argv[1])
