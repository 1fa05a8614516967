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
    """Predicted arcs above the words (green where they match gold, red where not), gold arcs below."""
    n = len(words)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * (n + 1)), 4.2))
    for m in range(1, n + 1):
        h = int(predicted[m])
        right = gold is None or h == int(gold[m])
        _arc(ax, h, m, up=True, color='tab:green' if right else 'tab:red')
        if gold is not None:
            _arc(ax, int(gold[m]), m, up=False, color='tab:blue')
    ax.set_xticks(range(n + 1), ['ROOT', *words], rotation=45, ha='right')
    ax.axhline(0, color='0.8', linewidth=0.8)
    reach = max(1, n) / 2 + 0.5
    ax.set_ylim(-reach if gold is not None else -0.3, reach)
    ax.set_xlim(-0.7, n + 0.7)
    ax.set_yticks([])
    for side in ('top', 'right', 'left'):
        ax.spines[side].set_visible(False)
    label = 'above: predicted (green = gold arc, red = not)' + ('; below: gold' if gold is not None else '')
    ax.set_title(f'{title}\n{label}' if title else label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _arc(ax, head: int, dependent: int, up: bool, color: str) -> None:
    centre, width = (head + dependent) / 2, abs(head - dependent)
    theta = (0, 180) if up else (180, 360)
    ax.add_patch(Arc((centre, 0), width, width, theta1=theta[0], theta2=theta[1], color=color, linewidth=1.3))
    ax.plot([dependent], [0], marker='v' if up else '^', color=color, markersize=5)
