"""The ``lstm-export`` command line: registers each stage's commands (``<stage>/cli.py``) and
turns every usage or library error into one line on stderr and exit code 1."""

from __future__ import annotations

import sys
from signal import Signals
from typing import Any

import typer
from typer.core import TyperGroup

from lstm_export import __version__
from lstm_export.console import err_console, plain, setup_logging
from lstm_export.errors import DeviceError, LstmExportError
from lstm_export.fileio import terminated_by


class _OneLineErrors(TyperGroup):
    """Report usage and library errors as one line with exit code 1, never a traceback."""

    def main(self, args: Any = None, **extra: Any) -> Any:  # type: ignore[override]
        code: Any = 0
        standalone_mode = extra.pop("standalone_mode", True)
        args = sys.argv[1:] if args is None else args
        args = args or ["--help"]  # a bare `lstm-export`: the help, exit code 0
        try:
            code = super().main(args=args, standalone_mode=False, **extra)
            if code == 130:  # typer turns Ctrl-C (and our SIGTERM/SIGHUP) into a silent 130
                signum = terminated_by()
                name = "interrupted" if signum is None else f"terminated by {Signals(signum).name}"
                err_console.print(f"[red]error:[/] {name}")
                code = 128 + signum if signum else 130
        except typer.TyperException as exc:  # usage errors: bad flag, value, command
            _fail(exc.format_message())
        except LstmExportError as exc:
            hint = " (--device cpu runs without it)" if isinstance(exc, DeviceError) else ""
            _fail(f"{exc}{hint}")
        except (typer.Abort, KeyboardInterrupt):
            err_console.print("[red]error:[/] interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code if isinstance(code, int) else 0)
        return code


def _fail(message: str) -> None:
    """One ``error:`` line; ``message`` may quote paths, names and metadata, so it is escaped."""
    err_console.print(f"[red]error:[/] {plain(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)


app = typer.Typer(
    name="lstm-export",
    cls=_OneLineErrors,
    help="Train, export (TorchScript / ONNX), run and benchmark the MNIST row-by-row LSTM.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstm-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    setup_logging(verbose)


def _register() -> None:
    from lstm_export.bench import cli as bench_cli
    from lstm_export.data import cli as data_cli
    from lstm_export.export import cli as export_cli
    from lstm_export.infer import cli as infer_cli
    from lstm_export.pipeline import cli as demo_cli
    from lstm_export.serve import cli as serve_cli
    from lstm_export.serve import triton_cli
    from lstm_export.train import cli as train_cli

    app.command("data")(data_cli.data)
    app.command("train")(train_cli.train)
    app.command("onnx")(export_cli.onnx)
    app.command("torchscript")(export_cli.torchscript)
    app.command("inspect")(export_cli.inspect)
    app.command("shapes")(export_cli.shapes)
    app.command("infer")(infer_cli.infer)
    app.command("bench")(bench_cli.bench)
    app.command("demo")(demo_cli.demo)
    app.command("serve")(serve_cli.serve)
    app.command("triton")(triton_cli.triton)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
