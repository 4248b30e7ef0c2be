"""Accuracy and confusion matrix of a labelled run; the matrix as a rich table or a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstm_export.errors import OutputError
from lstm_export.fileio import atomic_path

if TYPE_CHECKING:
    from rich.table import Table


class Confusion:
    """A running confusion matrix ``(C, C)``: rows are true classes, columns predictions."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        n = len(self.class_names)
        self.matrix = np.zeros((n, n), dtype=np.int64)

    def add(
        self, labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray
    ) -> None:
        """Count pairs of class indices, ``labels`` and ``predictions`` both ``(N,)``."""
        n = len(self.class_names)
        np.add.at(self.matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
        assert self.matrix.shape == (n, n)

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.matrix))

    @property
    def accuracy(self) -> float | None:
        """Fraction correct, None when nothing was counted."""
        return self.correct / self.total if self.total else None

    def per_class_recall(self) -> np.ndarray:
        """float64 ``(C,)``: correct / true count per class (NaN where a class has no images)."""
        counts = self.matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, np.diag(self.matrix) / counts, np.nan)


def confusion_table(confusion: Confusion) -> Table:
    """A rich table of the matrix with per-class recall; the diagonal in bold green."""
    from rich.markup import escape
    from rich.table import Table

    names = [escape(n) for n in confusion.class_names]
    table = Table(
        title="confusion matrix (rows: true class, columns: predicted)",
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
    )
    table.add_column("true", justify="right", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("recall", justify="right")
    recall = confusion.per_class_recall()
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            value = int(confusion.matrix[i, j])
            text = str(value) if value else "[dim]·[/]"
            cells.append(
                f"[bold green]{text}[/]" if i == j else (f"[red]{text}[/]" if value else text)
            )
        r = recall[i]
        cells.append("-" if np.isnan(r) else f"{r * 100:.1f} %")
        table.add_row(name, *cells)
    return table


def save_confusion_png(confusion: Confusion, path: Path, *, title: str = "") -> Path:
    """Write the matrix as a PNG heat map (atomically); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"confusion matrix image {path} must end in .png")
    m = confusion.matrix
    names = confusion.class_names
    size = max(4.0, 0.55 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=120)
    try:
        shown = np.log1p(m)  # the diagonal would otherwise wash out every mistake
        ax.imshow(shown, cmap="Blues")
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = confusion.accuracy
        heading = title or "confusion matrix"
        if acc is not None:
            heading += f" — accuracy {acc * 100:.2f} % ({confusion.correct}/{confusion.total})"
        ax.set_title(heading, fontsize=9)
        limit = shown.max() / 2 if shown.max() > 0 else 1
        for i in range(len(names)):
            for j in range(len(names)):
                if m[i, j]:
                    color = "white" if shown[i, j] > limit else "black"
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color=color)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
