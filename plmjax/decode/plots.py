"""A picture of an arbitrary-order generation (u-PMLM): one row per step, one column per generated position; the
piece written at that step is highlighted, pieces written before it stay, positions not yet written show [MASK]."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

MASKED, WRITTEN, NEW = 0, 1, 2
_COLOURS = ListedColormap(['#eeeeee', '#c6dbef', '#fd8d3c'])


def order_grid(order: Sequence[int], num_positions: int) -> np.ndarray:
    """[steps, positions] of MASKED / WRITTEN / NEW: row s is the span after step s+1 (one position a step)."""
    grid = np.full((len(order), num_positions), MASKED, np.int8)
    for step, position in enumerate(order):
        grid[step:, position] = WRITTEN
        grid[step, position] = NEW
    return grid


def generation_order(path: str, pieces: Sequence[str], order: Sequence[int], title: str = '') -> None:
    """pieces: the generated span's pieces by position; order: their positions (0-based) in the order written."""
    grid = order_grid(order, len(pieces))
    fig, ax = plt.subplots(figsize=(1.1 * len(pieces) + 1.5, 0.45 * len(order) + 1.2))
    ax.imshow(grid, cmap=_COLOURS, vmin=0, vmax=2, aspect='auto')
    for step in range(grid.shape[0]):
        for position in range(grid.shape[1]):
            text = '[MASK]' if grid[step, position] == MASKED else pieces[position]
            ax.text(position, step, text, ha='center', va='center', fontsize=8,
                    color='#888888' if grid[step, position] == MASKED else 'black')
    ax.set_xticks(range(len(pieces)), [str(p + 1) for p in range(len(pieces))])
    ax.set_yticks(range(len(order)), [f'step {s + 1}: pos {p + 1}' for s, p in enumerate(order)])
    ax.set_xlabel('position in the generated span')
    ax.set_title(title or 'generation order')
    ax.tick_params(length=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
