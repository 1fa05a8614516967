"""The u-PMLM generation-order picture: its grid against the definition (row s = the span after s+1 steps)."""
import numpy as np

from plmjax.decode import plots


def test_order_grid_marks_each_step_and_keeps_what_was_written():
    grid = plots.order_grid([2, 0, 3, 1], 4)
    M, W, N = plots.MASKED, plots.WRITTEN, plots.NEW
    np.testing.assert_array_equal(grid, [[M, M, N, M],
                                         [N, M, W, M],
                                         [W, M, W, N],
                                         [W, N, W, W]])
    # exactly one new position a step, and after the last step every position is written
    assert ((grid == N).sum(1) == 1).all() and (grid[-1] != M).all()


def test_generation_order_writes_a_png(tmp_path):
    path = tmp_path / 'order.png'
    plots.generation_order(str(path), ['This', 'is', 'a', 'sentence'], [2, 0, 3, 1], title='t')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
