"""numformer.sentence.batch_plan: how encode() cuts texts into batches for its threads. Every
thread gets the same number of batches, so none waits idle for the last one; each batch holds
texts of similar length, longest first."""

import pytest

from numformer.sentence import batch_plan


@pytest.mark.parametrize("n, batch_size, threads, sizes", [
    (96, 32, 2, [24, 24, 24, 24]),      # not 32, 32, 32: one thread would run the third alone
    (64, 32, 2, [32, 32]),
    (96, 32, 1, [32, 32, 32]),          # one thread: nothing to balance
    (512, 32, 2, [32] * 16),
    (100, 32, 2, [25, 25, 25, 25]),
    (10, 32, 2, [5, 5]),                # fewer texts than a batch: one batch per thread
    (3, 32, 4, [1, 1, 1]),              # fewer texts than threads
    (200, 32, 2, [25] * 8),             # 7 batches -> 8
    (0, 32, 2, []),
])
def test_texts_of_one_length_are_spread_evenly(n, batch_size, threads, sizes):
    plan = batch_plan([256] * n, batch_size, threads)
    assert [len(b) for b in plan] == sizes
    assert sorted(i for b in plan for i in b) == list(range(n))


def test_batches_keep_similar_lengths_longest_first():
    lengths = [5, 200, 7, 180, 6, 190, 99, 8, 100]
    plan = batch_plan(lengths, batch_size=4, threads=2)
    # 9 texts need 3 batches of 4, made 4 for 2 threads: at most 3 texts each; and a batch ends
    # where the next text has under half its longest's tokens (8 < 100 / 2)
    assert [[lengths[i] for i in b] for b in plan] == [[200, 190, 180], [100, 99], [8, 7, 6], [5]]
