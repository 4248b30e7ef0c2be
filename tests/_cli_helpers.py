"""Shared assertion for CLI tests: a failure is one ``error:`` line, exit code 1, no traceback."""

from __future__ import annotations

from typing import Any


def one_line_error(result: Any) -> str:
    """Assert ``result`` (typer CliRunner) failed with one line and exit 1; return that line."""
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    return str(lines[0])
