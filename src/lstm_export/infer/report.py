"""How ``infer`` shows a run: opening lines, summary, errors, accuracy, the confusion matrix (a
table up to 20 classes, else the most confused pairs) and its PNG; outside text escaped (plain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lstm_export.console import count, plain, print_whole
from lstm_export.errors import OutputError
from lstm_export.fileio import atomic_path
from lstm_export.infer.rows import Confusion, Prediction, Run, Summary
from lstm_export.infer.writers import printable_text

#: error rows listed on the terminal (all of them are in the output)
SHOWN_ERRORS = 10
#: most classes shown as a full table; more get the confused pairs and per-class figures
TABLE_CLASSES = 20
#: most classes drawn as a PNG (cell counts written in up to 30)
PNG_CLASSES = 1000


def print_start(run: Run, err: Console) -> None:
    """The model, the folder and the plan, before the first row."""
    walk, summary = run.walk, run.summary
    assert summary is not None
    for line in (
        f"model    {plain(summary.model)}: {plain(run.model_line)}",
        f"folder   {plain(walk.root)}: {count(len(walk.paths), 'image')}, "
        f"{count(walk.skipped, 'other file')} skipped, {walk.hidden:,} hidden; "
        f"{plain(summary.labels)}",
        f"plan     {plain(run.plan.describe())}",
    ):
        err.print(line, highlight=False, soft_wrap=True)


def print_summary(summary: Summary, errors: list[Prediction], out: Console, err: Console) -> None:
    """Counts, speed, errors (the first few), and accuracy with the confusion when labelled."""
    s, shown = summary, errors[:SHOWN_ERRORS]
    say: dict[str, Any] = {"highlight": False, "soft_wrap": True}
    out.print(
        f"classified {s.classified:,} of {count(s.images, 'image')} in {s.seconds:.2f} s "
        f"({s.images_per_second:,.0f} images/s); {count(s.errors, 'error')}, "
        f"{count(s.skipped, 'other file')} skipped",
        **say,
    )
    for row in shown:  # a file name may hold anything: printable_text
        err.print(f"  [red]error[/] {plain(printable_text(row.path))}: {plain(row.error)}", **say)
    if s.errors > len(shown):
        err.print(f"  ... and {s.errors - len(shown):,} more (see the error column)")
    for problem in s.unreadable_folders:
        err.print(f"  [red]folder not read[/] {plain(problem)}", **say)
    c = s.confusion
    if c is None or c.accuracy is None:
        return
    out.print(
        f"accuracy {c.accuracy * 100:.2f} % ({c.correct:,} of {count(c.total, 'labelled image')}"
        f"{'; errors not counted' if s.errors else ''})",
        **say,
    )
    if len(c.class_names) <= TABLE_CLASSES:
        print_whole(out, confusion_table(c))
    else:
        print_many_classes(c, out)


def confusion_table(confusion: Confusion) -> Table:
    """A rich table of the matrix with per-class recall; the diagonal in bold green."""
    names = [plain(n) for n in confusion.class_names]
    title = "confusion matrix (rows: true class, columns: predicted)"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("true", justify="right", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("recall", justify="right")
    matrix, recall = confusion.matrix.tolist(), confusion.per_class_recall()
    for i, name in enumerate(names):
        cells = [f"[red]{value}[/]" if value else "[dim]·[/]" for value in matrix[i]]
        cells[i] = f"[bold green]{matrix[i][i] or '[dim]·[/]'}[/]"
        cells.append("-" if np.isnan(recall[i]) else f"{recall[i] * 100:.1f} %")
        table.add_row(name, *cells)
    return table


def print_many_classes(confusion: Confusion, out: Console) -> None:
    """Too many classes for a table: per-class recall at a glance, and the most confused pairs."""
    recall = confusion.per_class_recall()
    seen = np.flatnonzero(~np.isnan(recall))
    worst = seen[np.argsort(recall[seen], kind="stable")[:3]].tolist()
    out.print(
        f"{len(confusion.class_names):,} classes (too many for a table), "
        f"{len(seen):,} of them in the folder; recall per class: median "
        f"{np.median(recall[seen]) * 100:.1f} %, lowest "
        + ", ".join(f"{plain(confusion.class_names[i])} {recall[i] * 100:.1f} %" for i in worst),
        highlight=False,
        soft_wrap=True,
    )
    pairs = confusion.top_mistakes(10)
    if not pairs:
        return
    table = Table(title="most confused (true -> predicted)", title_justify="left", show_edge=False)
    for column in ("true", "predicted", "images"):
        table.add_column(column, justify="right")
    for true, predicted, images in pairs:
        table.add_row(plain(true), plain(predicted), f"{images:,}")
    print_whole(out, table)


def save_confusion_png(confusion: Confusion, path: Path, *, title: str = "") -> Path:
    """Write the matrix as a PNG heat map (atomically); returns ``path``. OutputError beyond
    :data:`PNG_CLASSES` classes."""
    from matplotlib.figure import Figure

    path, n = Path(path), len(confusion.class_names)
    if path.suffix.lower() != ".png":
        raise OutputError(f"confusion matrix image {path} must end in .png")
    if n > PNG_CLASSES:
        raise OutputError(f"{n:,} classes are too many to draw (at most {PNG_CLASSES:,})")
    m = confusion.matrix
    names = [name.replace("$", r"\$") for name in confusion.class_names]  # no mathtext
    size = min(24.0, max(4.0, 0.55 * n + 1.5))
    fig = Figure(figsize=(size + 1.0, size), dpi=120)
    ax = fig.subplots()
    shown = np.log1p(m)  # the diagonal would otherwise wash out every mistake
    ax.imshow(shown, cmap="Blues")
    if n <= 50:
        ax.set_xticks(range(n), names)
        ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true")
    heading, acc = title or "confusion matrix", confusion.accuracy
    if acc is not None:
        heading += f" — accuracy {acc * 100:.2f} % ({confusion.correct}/{confusion.total})"
    ax.set_title(heading, fontsize=9)
    limit = shown.max() / 2 if shown.max() > 0 else 1
    for i, j in zip(*np.nonzero(m), strict=True) if n <= 30 else ():
        color = "white" if shown[i, j] > limit else "black"
        ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
