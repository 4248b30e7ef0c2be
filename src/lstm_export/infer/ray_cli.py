"""The ``--engine`` choice of ``lstm-export infer``, and the check of the Ray-only options.

Imported by the CLI when it loads, so it imports nothing heavy (never ray): the engine itself is
:mod:`lstm_export.infer.ray_engine`, imported only for ``--engine ray``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.errors import ConfigError

if TYPE_CHECKING:
    from lstm_export.infer.classify import FolderRun
    from lstm_export.infer.ray_engine import RayRun
    from lstm_export.infer.writers import OutputFormat


class Engine(str, Enum):
    """Where ``infer`` runs: in this process, or on a Ray cluster through Ray Data."""

    in_process = "in-process"
    ray = "ray"


def check_engine_options(
    engine: Engine | str,
    *,
    address: str | None = None,
    actors: int | None = None,
    output_dir: Path | None = None,
) -> None:
    """ConfigError when a Ray-only option is given without ``--engine ray``."""
    if Engine(engine) == Engine.ray:
        return
    given = [
        flag
        for flag, value in (
            ("--address", address),
            ("--actors", actors),
            ("--output-dir", output_dir),
        )
        if value is not None
    ]
    if given:
        raise ConfigError(f"{', '.join(given)} only work with --engine ray")


def resolve_output_format(
    engine: Engine | str, output: Path | None, fmt: OutputFormat | str = "auto"
) -> str:
    """The format of ``-o`` (OutputError for an unknown suffix); ``.parquet`` with ``--engine ray``."""
    from lstm_export.infer.writers import resolve_format

    if Engine(engine) == Engine.ray:
        from lstm_export.infer.ray_engine import resolve_format as ray_format

        return ray_format(output, fmt)
    return resolve_format(output, fmt).value


def folder_run(
    engine: Engine | str,
    model: Path,
    folder: Path,
    *,
    address: str | None = None,
    actors: int | None = None,
    output: Path | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
    **settings: Any,
) -> FolderRun | RayRun:
    """The run of ``engine``: a FolderRun (in-process) or a RayRun, with the same interface.

    ``settings``: those of FolderRun. ConfigError for Ray-only options without ``--engine ray``.
    """
    check_engine_options(engine, address=address, actors=actors, output_dir=output_dir)
    if Engine(engine) == Engine.ray:
        from lstm_export.infer.ray_engine import RayRun

        return RayRun(
            model, folder, address=address, actors=actors, output=output,
            output_dir=output_dir, progress=progress, **settings,
        )  # fmt: skip
    from lstm_export.infer.classify import FolderRun

    return FolderRun(model, folder, **settings)


def rows_opener(run: FolderRun | RayRun, default: Callable[..., Any]) -> Callable[..., Any]:
    """How the run's rows are written: ``default`` (writers.open_rows) in-process; a RayRun's own
    (also ``.parquet``; nothing with ``--output-dir``, where the workers wrote the rows)."""
    opener = getattr(run, "open_rows", None)
    return opener if opener is not None else default
