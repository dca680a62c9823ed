"""Data-parallel training: each process's share of the data."""

from __future__ import annotations

import pytest

from ssam.data.sampling import EpochShuffle


@pytest.mark.parametrize(("examples", "processes", "batch"), [(24, 2, 3), (25, 2, 3), (7, 3, 2), (3, 4, 2)])
def test_each_step_takes_the_single_process_batch_of_w_times_b_cut_into_one_block_per_process(
    examples, processes, batch
):
    shares = [
        list(EpochShuffle(examples, seed=5, rank=rank, world_size=processes, batch_size=batch))
        for rank in range(processes)
    ]
    single = list(EpochShuffle(examples, seed=5))
    assert len({len(share) for share in shares}) == 1  # the same number of steps everywhere
    steps = -(-len(shares[0]) // batch)
    in_step_order = [
        i for step in range(steps) for share in shares for i in share[step * batch : (step + 1) * batch]
    ]
    # The single process's order, padded with its own first examples to a multiple of W.
    assert in_step_order == [single[i % examples] for i in range(len(in_step_order))]
    assert len(in_step_order) - examples < processes
