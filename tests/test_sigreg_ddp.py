"""SIGReg under torch.distributed: two gloo processes on CPU must reproduce the single-process value and
gradients on the concatenated batch (reference §4.2; the DDP argument is in lewm/sigreg.py)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lewm.sigreg import SIGReg

WORLD_SIZE = 2
SHARD_SIZES = (20, 12)  # unequal on purpose: the statistic uses the global N
DIM, NUM_PROJECTIONS, STEPS, INPUT_DIM = 8, 64, 3, 6
DIRECTION_SEED = 11


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (embeddings, and raw inputs for the linear model), the same in every process."""
    generator = torch.Generator().manual_seed(0)
    batch = sum(SHARD_SIZES)
    return torch.randn(batch, STEPS, DIM, generator=generator), torch.randn(
        batch, STEPS, INPUT_DIM, generator=generator
    )


def _linear_model() -> nn.Linear:
    torch.manual_seed(5)
    return nn.Linear(INPUT_DIM, DIM)


def _shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SHARD_SIZES[:rank])
    return tensor[start : start + SHARD_SIZES[rank]]


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE)
    try:
        sigreg = SIGReg(num_projections=NUM_PROJECTIONS).train()
        embeddings, inputs = _inputs()
        # rank 1 seeds differently: only rank 0's directions may be used (they are broadcast)
        direction_seed = DIRECTION_SEED + rank

        shard = _shard(embeddings, rank).clone().requires_grad_()
        value = sigreg(shard, generator=torch.Generator().manual_seed(direction_seed))
        value.backward()

        model = nn.parallel.DistributedDataParallel(_linear_model())
        ddp_value = sigreg(
            model(_shard(inputs, rank)), generator=torch.Generator().manual_seed(direction_seed)
        )
        ddp_value.backward()

        sigreg.eval()  # no communication in eval mode: the local value of the shard
        local_value = sigreg(
            _shard(embeddings, rank), generator=torch.Generator().manual_seed(DIRECTION_SEED)
        )

        torch.save(
            {
                "value": value.detach(),
                "grad": shard.grad,
                "ddp_value": ddp_value.detach(),
                "ddp_grads": [p.grad for p in model.module.parameters()],
                "local_value": local_value,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_single_process_on_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    sigreg = SIGReg(num_projections=NUM_PROJECTIONS)
    embeddings, inputs = _inputs()

    embeddings.requires_grad_()
    expected = sigreg(embeddings, generator=torch.Generator().manual_seed(DIRECTION_SEED))
    expected.backward()
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["value"], expected.detach())
        # each rank's local input gradient is WORLD_SIZE × the global one (see lewm/sigreg.py) ...
        torch.testing.assert_close(result["grad"] / WORLD_SIZE, _shard(embeddings.grad, rank))

    # ... which DDP's gradient averaging turns into exactly the single-process parameter gradient
    model = _linear_model()
    expected_ddp = sigreg(model(inputs), generator=torch.Generator().manual_seed(DIRECTION_SEED))
    expected_ddp.backward()
    for result in results:
        torch.testing.assert_close(result["ddp_value"], expected_ddp.detach())
        for got, want in zip(result["ddp_grads"], [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, want)

    for rank, result in enumerate(results):
        local = sigreg(
            _shard(embeddings.detach(), rank), generator=torch.Generator().manual_seed(DIRECTION_SEED)
        )
        torch.testing.assert_close(result["local_value"], local)
