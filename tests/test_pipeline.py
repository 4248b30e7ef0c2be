"""The decode/inference pipeline: answers in order, knobs capped at what the machine has, and a
quiet Ctrl-C with decode processes (issue 18)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lstm_export.devices import usable_cores
from lstm_export.errors import InputError
from lstm_export.infer.pipeline import MAX_BATCH_SIZE, Plan, pipelined, plan_run


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """30 PNGs whose every pixel is the file's number."""
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(30):
        Image.fromarray(np.full((28, 28), i, np.uint8)).save(folder / f"{i:02d}.png")
    return sorted(str(p) for p in folder.iterdir())


@pytest.mark.parametrize(
    "plan", [Plan(0, 1, 4), Plan(1, 1, 4, 2), Plan(1, 1, 4, 3), Plan(2, 1, 7, 2), Plan(2, 1, 4)]
)
def test_answers_come_back_in_order(plan: Plan, pngs: list[str]) -> None:
    before = threading.active_count()
    batches = pipelined(pngs, plan, lambda digits, errors: digits[:, 0, 0].tolist(), invert="no")
    assert [value for _, values in batches for value in values] == list(range(30))
    assert threading.active_count() == before


def test_closing_early_or_a_failure_stops_every_thread(pngs: list[str]) -> None:
    before = threading.active_count()
    batches = pipelined(pngs, Plan(1, 1, 4, 2), lambda digits, errors: len(errors))
    assert next(batches) == ([None] * 4, 4)
    batches.close()
    assert threading.active_count() == before

    def boom(digits: np.ndarray, errors: list[str | None]) -> int:
        raise InputError("model failed")

    with pytest.raises(InputError, match="model failed"):
        list(pipelined(pngs, Plan(1, 1, 4, 2), boom))
    assert threading.active_count() == before


def test_knobs_are_capped_at_what_the_machine_has(caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_run(workers=200, threads=10_000, streams=50, batch_size=10**6, cores=4)
    assert (plan.workers, plan.threads, plan.streams, plan.batch_size) == (4, 4, 4, MAX_BATCH_SIZE)
    assert [r.getMessage() for r in caplog.records] == [
        f"1,000,000 images per batch capped at {MAX_BATCH_SIZE:,}",
        "200 decode workers capped at 4 (the usable cores)",
        "10,000 inference threads capped at 4 (the usable cores)",
        "50 inference streams capped at 4 (the usable cores)",
    ]
    caplog.clear()
    plan_run(workers=1, threads=1)
    assert not caplog.records
    assert plan_run(threads=10_000).threads == usable_cores()
    with pytest.raises(InputError, match="decode workers must be >= 0"):
        plan_run(workers=-1)


def test_ctrl_c_with_decode_processes_prints_no_worker_traceback(
    pngs: list[str], tmp_path: Path
) -> None:
    """SIGINT reaches every process of the terminal's group; decode workers ignore it and the
    run that started them shuts them down."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys, time
            from lstm_export.infer.pipeline import Plan, decoded_batches
            if __name__ == "__main__":
                try:
                    for i, _ in enumerate(decoded_batches(sys.argv[1:], Plan(2, 1, 2))):
                        time.sleep(2)  # the workers fill their window and wait, idle
                        os.killpg(0, signal.SIGINT)  # Ctrl-C at a terminal
                        time.sleep(30)
                except KeyboardInterrupt:
                    print("interrupted")
                    sys.exit(130)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script), *pngs],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert (done.returncode, done.stdout.strip()) == (130, "interrupted"), done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
