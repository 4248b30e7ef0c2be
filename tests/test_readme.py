"""Every fenced code block of README.md runs as written, on the state that `make demo` leaves.

A session fixture builds that state cheaply in a temporary working directory: a small model
(hidden size 32, one epoch on 5,000 images, seed 0: about 64 % accurate, enough for the int8
guard) is trained with the library into ``runs/demo/model.pt``, exported (unvalidated: the
README's export block validates) to ``model.onnx``, ``model.ts`` and ``model.int8.onnx``, and 200 test digits are written to
``runs/demo/samples/<digit>/`` as the demo writes its 2,000. Then, in README order and in that
directory, each ```bash block runs in ``bash -e`` with the venv's ``bin`` first on PATH, and each
```python block runs with the venv's python. MNIST comes from the ``mnist_dir`` fixture through
``$LSTM_EXPORT_DATA_DIR``.

Lines skipped, and only these: ``make ...`` lines (they build the venv or run the full demo and
the whole test suite, minutes each) and lines that install packages (``pip install``,
``apt-get``/``apt install``). A block left empty by that is reported as skipped. Blocks fenced
any other way (```text for output) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("bash", "python")
#: fence languages a README block may use; anything else is probably a typo of one of these
KNOWN = (*RUNNABLE, "text")
MAX_README_BYTES = 10_500
BLOCK_TIMEOUT_S = 180

_FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SKIPPED_LINE = re.compile(
    r"^\s*(make(\s|$)|(sudo\s+)?(pip3?|python3?\s+-m\s+pip|\S*/pip3?)\s+install\b"
    r"|(sudo\s+)?apt(-get)?\s+install\b)"
)


@dataclass(frozen=True)
class Block:
    index: int
    lang: str
    code: str
    line: int  # line of the opening fence in README.md

    @property
    def name(self) -> str:
        return f"{self.index}-{self.lang}-L{self.line}"


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(i, m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for i, m in enumerate(_FENCE.finditer(text))
    ]


def runnable_lines(block: Block) -> str:
    """The block as it runs: bash without ``make`` and package-install lines."""
    if block.lang != "bash":
        return block.code
    return "".join(
        line for line in block.code.splitlines(keepends=True) if not _SKIPPED_LINE.match(line)
    )


#: the blocks the test runs: every bash and python block but those holding only make / install
#: lines (the first commands, which build the environment these tests run in)
BLOCKS = [b for b in readme_blocks() if b.lang in RUNNABLE and runnable_lines(b).strip()]


def test_readme_is_short_and_fenced() -> None:
    """The README stays the front door (about 10 KB) and every fence says what it holds."""
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes (keep it <= {MAX_README_BYTES})"
    blocks = readme_blocks()
    assert blocks, "no fenced blocks found in README.md"
    unknown = [f"line {b.line}: ```{b.lang}" for b in blocks if b.lang not in KNOWN]
    assert not unknown, f"fence each block as one of {KNOWN}: {unknown}"
    assert any(b.lang == "python" for b in blocks), "the README has no Python example"


@pytest.fixture(scope="session")
def demo_workdir(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding what `make demo` writes to runs/demo (except the bench files)."""
    from lstm_export.data.mnist import load_split
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.pipeline.samples import write_sample_folder
    from lstm_export.train.loop import train
    from lstm_export.train.presets import TrainConfig
    from lstm_export.train.run_dir import save_run

    work = tmp_path_factory.mktemp("readme")
    demo = work / "runs" / "demo"
    config = TrainConfig(epochs=1, subset=5000, test_subset=1000, hidden_size=32, seed=0)
    checkpoint = save_run(train(config, mnist_dir), demo)
    # The README's own export block validates; here only the files are needed, quickly.
    onnx = export_onnx(checkpoint, demo / "model.onnx", legacy=True, validate=False).path
    export_torchscript(checkpoint, demo / "model.ts", validate=False)
    quantize_int8(onnx, demo / "model.int8.onnx", data_dir=mnist_dir)
    test = load_split(mnist_dir, "test")
    write_sample_folder(test.images, test.labels, demo / "samples", count=200)
    return work


def _env(mnist_dir: Path) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "lstm-export").exists():
        pytest.fail(f"no lstm-export beside {sys.executable}: run the tests with the venv's python")
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["LSTM_EXPORT_DATA_DIR"] = str(mnist_dir)
    env["COLUMNS"] = "100"
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block_runs(block: Block, demo_workdir: Path, mnist_dir: Path) -> None:
    code = runnable_lines(block)
    if block.lang == "bash":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        script = demo_workdir / f"readme_block_{block.index}.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    started = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=demo_workdir,
        env=_env(mnist_dir),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, (
        f"README.md block at line {block.line} ({block.lang}) exited {proc.returncode} "
        f"after {seconds:.1f} s\n--- code\n{code}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-3000:]}"
    )
