"""Pictures of one parsed sentence: its impact matrix as a heatmap with the words on both axes (the paper's
Figure 1), and the predicted tree drawn as arcs above the words against the gold tree below them."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Arc  # noqa: E402


def impact_heatmap(path: str, impact: np.ndarray, words: Sequence[str], title: str = '') -> None:
    """F[i, j] (row: the word whose representation changes; column: the word also masked), [CLS] first."""
    labels = ['[CLS]', *words]
    size = 2.5 + 0.42 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(impact, cmap='viridis')
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel('j (also masked)')
    ax.set_ylabel('i (representation compared)')
    ax.set_title(title or 'impact F[i, j]')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tree_arcs(path: str, words: Sequence[str], predicted: np.ndarray, gold: Optional[np.ndarray] = None,
              title: str = '') -> None:
    """The words on one line, predicted arcs above them (green where they match gold, red where not), gold arcs
    below; an arc's height grows with its length, the arrowhead marks the dependent."""
    n = len(words)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * (n + 1)), 4.5))
    for k, word in enumerate(['ROOT', *words]):
        ax.text(k, 0, word, ha='center', va='center', fontsize=8, rotation=30 if n > 12 else 0)
    for m in range(1, n + 1):
        h = int(predicted[m])
        right = gold is None or h == int(gold[m])
        _arc(ax, h, m, n, up=True, color='tab:green' if right else 'tab:red')
        if gold is not None:
            _arc(ax, int(gold[m]), m, n, up=False, color='tab:blue')
    ax.set_ylim(-1.1 if gold is not None else -_BAND - 0.05, 1.1)
    ax.set_xlim(-0.7, n + 0.7)
    ax.axis('off')
    label = 'above: predicted (green = gold arc, red = not)' + ('; below: gold' if gold is not None else '')
    ax.set_title(f'{title}\n{label}' if title else label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_BAND = 0.14  # half the height of the words' line, in the axes' y units (arcs reach at most 1)


def _arc(ax, head: int, dependent: int, n: int, up: bool, color: str) -> None:
    centre, width = (head + dependent) / 2, abs(head - dependent)
    base = _BAND if up else -_BAND
    height = 2 * (0.12 + 0.8 * width / max(n, 1))  # the ellipse's full height: the arc rises half of it
    theta = (0, 180) if up else (180, 360)
    ax.add_patch(Arc((centre, base), width, height, theta1=theta[0], theta2=theta[1], color=color, linewidth=1.2))
    ax.plot([dependent], [base], marker='v' if up else '^', color=color, markersize=4)
