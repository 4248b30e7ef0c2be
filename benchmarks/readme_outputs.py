"""Regenerate the outputs and figures README.md shows, so that they cannot drift.

    .venv/bin/python benchmarks/readme_outputs.py --check   # exit 1 listing what differs
    .venv/bin/python benchmarks/readme_outputs.py --write   # rewrite README.md in place
        [--workdir DIR] [--demo] [--demo-args "--epochs 1 ..."] [--readme FILE] [--venv DIR]
        [--skip-figures] [--timeout S] [--dump DIR]

Run it in the state ``make demo`` leaves (the repository root, or ``--workdir DIR`` holding
``runs/demo``); ``--demo`` runs ``lstm-export demo`` there first (``--demo-args`` passes it
options) and records what it printed in ``runs/demo/demo.log``. Run it without
``$LSTM_EXPORT_DATA_DIR`` so that the outputs read as a fresh clone's (MNIST in the cache).

Output blocks. A ```text block that follows a ```bash or ```python block (nothing but blank lines
and its marker between them) carries a marker on the line just before its fence::

    <!-- output: lines=1-4,...,/^  backend +prec/-; vary=/^ +\\S+ +\\d+ (.*)$/ -->

Every runnable block runs, in README order, in the work directory: bash as ``bash -e -o pipefail``
without its ``make`` and package-install lines (as tests/test_readme.py runs it), python with this
interpreter; the venv's ``bin`` first on PATH, ``COLUMNS=100``, unbuffered, stdout and stderr in
one stream as a terminal shows them, trailing spaces stripped. The text block becomes the lines
of that output the marker keeps. Marker keys, separated by ``;``:

- ``lines=ITEM,...`` the lines kept, in item order (default: all): ``N`` (1-based), ``N-M``,
  ``N-`` (to the end), ``/REGEX/`` (every line it matches), ``/REGEX/-``, ``/REGEX/-M``,
  ``/R1/-/R2/`` (a range from the first match; the end searched from there), ``...`` (a literal
  ``...`` line marking a cut). A line or regex that is not in the output is an error.
- ``vary=/REGEX/ ...`` more parts that vary run to run (see masking); only their groups, if any.
- ``from=FILE`` the text comes from FILE (relative to the work directory; ``runs/demo/demo.log``
  for the demo's output) instead of the block before it, which need not be runnable.

``--dump DIR`` also writes each runnable block's whole output, lines numbered, to
``DIR/block-N.txt`` (N: the line of its fence), to choose a marker's lines from.

Prose figures. The ``.venv`` size and its nvidia/torch/triton split (``du``, rounded up as
``du -h`` does, in GiB: ``0.9G``) replace the words at the anchors of :data:`FIGURES`; an anchor
found other than exactly once is an error. Every ``model*.pt``/``.ts``/``.onnx`` file the README
names must be in ``runs/demo`` after the blocks ran, unless its line names the flag that writes it
(``model.fp16.onnx`` beside ``--fp16``); that is reported, never written.

Masking rule (--check). A block or figure differs when its text differs after masking, in the
README's text and in the new output alike, what varies from run to run: every number directly
followed by a time or rate unit (``s``, ``ms``, ``µs``, ``min``, ``minutes``, ``images/s``,
``img/s``), every ratio (a number followed by ``x``, e.g. ``0.27x``), the ``⚠`` that flags an
unstable timing, and what the marker's ``vary`` regexes match. Accuracies, sizes, counts, names,
paths and hashes are compared as they are. --write writes the real output, unmasked.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = ("bash", "python")
DEMO_LOG = "runs/demo/demo.log"

#: a fenced block: language, body (the body ends with its last newline)
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: lines of a bash block that are not run: the venv build, the full demo, package installs
SKIPPED_LINE = re.compile(
    r"^\s*(make(\s|$)|(sudo\s+)?(pip3?|python3?\s+-m\s+pip|\S*/pip3?)\s+install\b"
    r"|(sudo\s+)?apt(-get)?\s+install\b)"
)
MARKER = re.compile(r"^<!-- output:(.*?)-->[ \t]*$")
_REGEX = r"/(?:[^/\\]|\\.)*/"
_BOUND = rf"(?:{_REGEX}|\d+)"
_ITEM = re.compile(rf"\s*(\.\.\.|{_BOUND}(?:-{_BOUND}?)?)\s*(?:,|$)")
#: numbers with a time or rate unit, ratios and the unstable-timing flag (see the docstring)
TIMING = re.compile(
    r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?=\s?(?:ms|µs|s|min|minutes|images/s|img/s)\b)"
    r"|\d[\d,]*(?:\.\d+)?(?=x\b)|⚠"
)
MASK = "#"
ARTIFACT = re.compile(r"\bmodel(?:\.\w+)*\.(?:pt|ts|onnx)\b")


class ReadmeError(Exception):
    """A marker, a block or an anchor the script cannot use; the message says which."""


Bound = int | re.Pattern[str]


@dataclass(frozen=True)
class LineItem:
    """One item of ``lines=``: a line, every match, a range, or a literal ``...`` (start None)."""

    start: Bound | None
    end: Bound | None = None
    ranged: bool = False


@dataclass(frozen=True)
class Marker:
    """A parsed ``<!-- output: ... -->`` marker."""

    lines: tuple[LineItem, ...] = ()
    vary: tuple[re.Pattern[str], ...] = ()
    source: str | None = None


@dataclass(frozen=True)
class Fence:
    """A fenced block of the README: body offsets and the 1-based line of its opening fence."""

    index: int
    lang: str
    code: str
    line: int
    start: int  # offset of the opening fence
    end: int  # offset just after the closing fence
    body: tuple[int, int]


@dataclass(frozen=True)
class OutputBlock:
    """A ```text block the script regenerates: from fence ``source`` or the file ``marker.source``."""

    fence: Fence
    marker: Marker
    source: Fence | None


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text[1:-1])
    except re.error as exc:
        raise ReadmeError(f"bad regex {text}: {exc}") from None


def _bound(text: str) -> Bound:
    if text.startswith("/"):
        return _regex(text)
    if int(text) < 1:
        raise ReadmeError("line numbers start at 1")
    return int(text)


def parse_lines(spec: str) -> tuple[LineItem, ...]:
    """``"1-3,...,/^x/-"`` -> its items (see the module docstring)."""
    items: list[LineItem] = []
    pos = 0
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if m is None or m.end() == pos:
            raise ReadmeError(f"cannot read lines={spec!r} at {spec[pos:]!r}")
        token, pos = m.group(1), m.end()
        if token == "...":
            items.append(LineItem(None))
            continue
        parts = re.fullmatch(rf"({_BOUND})(-)?({_BOUND})?", token)
        assert parts is not None  # _ITEM matched the same grammar
        end = parts.group(3)
        items.append(
            LineItem(_bound(parts.group(1)), _bound(end) if end else None, bool(parts.group(2)))
        )
    return tuple(items)


def parse_marker(line: str) -> Marker:
    """The marker on ``line`` (``<!-- output: key=value; ... -->``); ReadmeError if malformed."""
    m = MARKER.match(line.strip())
    if m is None:
        raise ReadmeError(f"not an output marker: {line!r}")
    lines: tuple[LineItem, ...] = ()
    vary: tuple[re.Pattern[str], ...] = ()
    source = None
    for part in filter(None, (p.strip() for p in m.group(1).split(";"))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ReadmeError(f"marker part {part!r} is not key=value")
        if key == "lines":
            lines = parse_lines(value)
        elif key == "vary":
            vary = tuple(_regex(r) for r in re.findall(_REGEX, value))
            if not vary:
                raise ReadmeError(f"vary={value!r} holds no /regex/")
        elif key == "from":
            if Path(value).is_absolute() or ".." in Path(value).parts:
                raise ReadmeError(f"from={value!r} must be a path inside the work directory")
            source = value
        else:
            raise ReadmeError(f"unknown marker key {key!r} (lines, vary, from)")
    return Marker(lines, vary, source)


def fences(text: str) -> list[Fence]:
    """Every fenced block of ``text``, in order."""
    return [
        Fence(
            i,
            m.group(1),
            m.group(2),
            text.count("\n", 0, m.start()) + 1,
            m.start(),
            m.end(),
            (m.start(2), m.end(2)),
        )
        for i, m in enumerate(FENCE.finditer(text))
    ]


def output_blocks(text: str) -> tuple[list[OutputBlock], list[str]]:
    """The text blocks to regenerate, and the problems found (a missing or malformed marker)."""
    blocks: list[OutputBlock] = []
    problems: list[str] = []
    all_fences = fences(text)
    for prev, fence in zip([None, *all_fences], all_fences, strict=False):
        if fence.lang != "text":
            continue
        before = text[prev.end if prev else 0 : fence.start].strip().splitlines()
        has_marker = bool(before) and before[-1].startswith("<!-- output:")
        adjacent = prev is not None and prev.lang in RUNNABLE and len(before) == int(has_marker)
        if not has_marker:
            if adjacent:
                problems.append(f"line {fence.line}: output block without a marker")
            continue
        try:
            marker = parse_marker(before[-1])
        except ReadmeError as exc:
            problems.append(f"line {fence.line - 1}: {exc}")
            continue
        if marker.source is None and not adjacent:
            problems.append(
                f"line {fence.line}: marker without from= must follow a bash or python block"
            )
            continue
        blocks.append(OutputBlock(fence, marker, None if marker.source else prev))
    return blocks, problems


def runnable_code(fence: Fence) -> str:
    """The block as it runs: bash without ``make`` and package-install lines."""
    if fence.lang != "bash":
        return fence.code
    lines = fence.code.splitlines(keepends=True)
    return "".join(line for line in lines if not SKIPPED_LINE.match(line))


def output_lines(output: str) -> list[str]:
    """Captured output as lines: trailing spaces and trailing blank lines dropped."""
    lines = [line.rstrip() for line in output.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _find(lines: list[str], bound: Bound, start: int = 0) -> int:
    if isinstance(bound, int):
        if bound > len(lines):
            raise ReadmeError(f"line {bound} asked for, the output has {len(lines)}")
        return bound - 1
    for i in range(start, len(lines)):
        if bound.search(lines[i]):
            return i
    raise ReadmeError(f"no line of the output matches /{bound.pattern}/")


def select_lines(lines: list[str], items: Sequence[LineItem]) -> list[str]:
    """The lines ``items`` keep, in item order (all lines when there are no items)."""
    if not items:
        return list(lines)
    kept: list[str] = []
    for item in items:
        if item.start is None:
            kept.append("...")
        elif item.ranged:
            first = _find(lines, item.start)
            last = len(lines) - 1 if item.end is None else _find(lines, item.end, first)
            kept.extend(lines[first : last + 1])
        elif isinstance(item.start, int):
            kept.append(lines[_find(lines, item.start)])
        else:
            matched = [line for line in lines if item.start.search(line)]
            if not matched:
                _find(lines, item.start)  # raises, naming the regex
            kept.extend(matched)
    return kept


def mask(text: str, vary: Sequence[re.Pattern[str]] = ()) -> str:
    """``text`` with what varies run to run replaced by ``#`` (see the module docstring)."""

    def masked(m: re.Match[str]) -> str:
        if not m.re.groups:
            return MASK
        out, pos = [], m.start()
        for g in range(1, m.re.groups + 1):
            if m.start(g) >= 0:
                out += [m.string[pos : m.start(g)], MASK]
                pos = m.end(g)
        return "".join(out) + m.string[pos : m.end()]

    lines = []
    for line in text.splitlines():
        for pattern in vary:
            line = pattern.sub(masked, line)
        lines.append(TIMING.sub(MASK, line))
    return "\n".join(lines)


@dataclass
class Change:
    """One block or figure whose new text differs from the README's."""

    where: str
    old: str
    new: str
    vary: tuple[re.Pattern[str], ...] = ()
    error: str | None = None

    @property
    def significant(self) -> bool:
        """An error, or a difference that masking does not explain."""
        return self.error is not None or mask(self.old, self.vary) != mask(self.new, self.vary)

    def describe(self, max_lines: int = 24) -> str:
        if self.error is not None:
            return f"{self.where}: {self.error}"
        diff = list(
            difflib.unified_diff(
                self.old.splitlines(), self.new.splitlines(), "README", "now", lineterm="", n=0
            )
        )[2:]
        cut = [f"  ... {len(diff) - max_lines} more diff lines"] if len(diff) > max_lines else []
        return "\n".join([f"{self.where}:", *(f"  {d}" for d in diff[:max_lines]), *cut])


#: runs a runnable fence in the work directory: (exit code, combined output)
Runner = Callable[[Fence], tuple[int, str]]


@dataclass
class Result:
    """The regenerated README text and what changed."""

    text: str
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def regenerate(text: str, run: Runner, workdir: Path, dump: Path | None = None) -> Result:
    """Run every runnable block in order and rebuild each output block from its marker.

    ``dump``: a folder that receives each runnable block's whole output, lines numbered.
    """
    blocks, problems = output_blocks(text)
    if problems:
        return Result(text, problems=problems)
    outputs: dict[int, tuple[int, str]] = {}
    for fence in fences(text):
        if fence.lang in RUNNABLE and runnable_code(fence).strip():
            outputs[fence.index] = run(fence)
            if dump is not None:
                code, output = outputs[fence.index]
                numbered = [f"{i:>4}  {line}" for i, line in enumerate(output_lines(output), 1)]
                dump.mkdir(parents=True, exist_ok=True)
                (dump / f"block-{fence.line}.txt").write_text(
                    "\n".join([f"exit {code}", *numbered, ""]), encoding="utf-8"
                )
    result = Result(text)
    for block in sorted(blocks, key=lambda b: b.fence.start, reverse=True):
        where = f"line {block.fence.line}"
        old = block.fence.code
        try:
            raw = _block_output(block, outputs, workdir)
            new = "\n".join(select_lines(output_lines(raw), block.marker.lines)) + "\n"
            if "```" in new:
                raise ReadmeError("the output holds a ``` fence")
        except ReadmeError as exc:
            result.changes.append(Change(where, old, old, error=str(exc)))
            continue
        result.changes.append(Change(where, old, new, block.marker.vary))
        lo, hi = block.fence.body
        result.text = result.text[:lo] + new + result.text[hi:]
    result.changes.reverse()
    return result


def _block_output(block: OutputBlock, outputs: dict[int, tuple[int, str]], workdir: Path) -> str:
    if block.marker.source is not None:
        path = workdir / block.marker.source
        if not path.is_file():
            hint = " (run with --demo)" if block.marker.source == DEMO_LOG else ""
            raise ReadmeError(f"{path} does not exist{hint}")
        return path.read_text(encoding="utf-8", errors="replace")
    assert block.source is not None
    if block.source.index not in outputs:
        raise ReadmeError(f"the block at line {block.source.line} runs nothing")
    code, output = outputs[block.source.index]
    if code != 0:
        tail = "\n".join(output_lines(output)[-8:])
        raise ReadmeError(f"the block at line {block.source.line} exited {code}:\n{tail}")
    return output


@dataclass(frozen=True)
class Figure:
    """A figure in the prose: the one group of ``anchor`` is replaced by ``value(venv)``."""

    name: str
    anchor: re.Pattern[str]
    value: Callable[[Path], str]


def _du_kib(paths: Sequence[Path]) -> int:
    """Disk usage of ``paths`` together in KiB (``du -skc``)."""
    if not paths:
        raise ReadmeError("nothing to measure")
    proc = subprocess.run(
        ["du", "-skc", *map(str, paths)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ReadmeError(f"du failed: {proc.stderr.strip()}")
    return int(proc.stdout.strip().splitlines()[-1].split()[0])


def gib(kib: int) -> str:
    """KiB as ``du -h`` rounds them (up, one decimal), always in GiB: 917868 -> ``0.9G``."""
    return f"{math.ceil(kib * 10 / 1024**2) / 10:.1f}G"


def _site_packages(venv: Path, pattern: str) -> list[Path]:
    return sorted(venv.glob(f"lib/python*/site-packages/{pattern}"))


def _part(pattern: str) -> Callable[[Path], str]:
    return lambda venv: gib(_du_kib(_site_packages(venv, pattern)))


FIGURES: tuple[Figure, ...] = (
    Figure("venv size", re.compile(r"`du -sh \.venv`: (\S+) here"), lambda v: gib(_du_kib([v]))),
    Figure("nvidia libraries", re.compile(r"`nvidia-\*` libraries take (\S+),"), _part("nvidia*")),
    Figure("torch", re.compile(r"libraries take \S+, torch (\S+),"), _part("torch")),
    Figure("triton", re.compile(r", triton (\S+?)\.\s"), _part("triton")),
)


def figure_anchor_problems(text: str, figures: Sequence[Figure] = FIGURES) -> list[str]:
    """Figures whose anchor is not found exactly once in ``text``."""
    return [
        f"figure {f.name!r}: anchor /{f.anchor.pattern}/ found {n} times (expected once)"
        for f in figures
        if (n := len(f.anchor.findall(text))) != 1
    ]


def apply_figures(result: Result, venv: Path, figures: Sequence[Figure] = FIGURES) -> None:
    """Replace each figure in ``result.text`` by its value now, recording the change."""
    result.problems += figure_anchor_problems(result.text, figures)
    for figure in figures:
        m = figure.anchor.search(result.text)
        if m is None:
            continue
        try:
            new = figure.value(venv)
        except ReadmeError as exc:
            result.changes.append(
                Change(f"figure {figure.name!r}", m.group(1), m.group(1), error=str(exc))
            )
            continue
        result.changes.append(Change(f"figure {figure.name!r}", m.group(1), new))
        result.text = result.text[: m.start(1)] + new + result.text[m.end(1) :]


def unwritten_files(text: str, demo_dir: Path) -> list[str]:
    """``model*`` files the README names that ``demo_dir`` lacks, on a line without their flag."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for name in sorted(set(ARTIFACT.findall(line))):
            if (demo_dir / name).exists():
                continue
            flags = [f"--{part}" for part in name.split(".")[1:-1]]
            if not flags or not any(re.search(rf"{f}\b", line) for f in flags):
                problems.append(
                    f"line {number}: {name} is not written by the demo, and the line does not "
                    f"name the flag that writes it"
                )
    return problems


def block_runner(workdir: Path, timeout: float) -> Runner:
    """Run a fence as the README's reader would, in ``workdir`` (see the module docstring)."""
    env = _environment()

    def run(fence: Fence) -> tuple[int, str]:
        code = runnable_code(fence)
        with tempfile.TemporaryDirectory(prefix="readme-block-") as tmp:
            if fence.lang == "bash":
                argv = ["bash", "-e", "-o", "pipefail", "-c", code]
            else:
                script = Path(tmp) / f"readme_block_{fence.index}.py"
                script.write_text(code, encoding="utf-8")
                argv = [sys.executable, str(script)]
            print(f"running the {fence.lang} block at line {fence.line} ...", file=sys.stderr)
            return _run(argv, workdir, env, timeout)

    return run


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("PYTHONPATH", "FORCE_COLOR", "LINES"):
        env.pop(name, None)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        return 124, f"{out}\n(timed out after {timeout:.0f} s)"
    return proc.returncode, proc.stdout


def run_demo(workdir: Path, args: list[str], timeout: float) -> None:
    """``lstm-export demo ARGS`` in ``workdir``, its output recorded in ``runs/demo/demo.log``."""
    exe = Path(sys.executable).parent / "lstm-export"
    if not exe.exists():
        raise ReadmeError(
            f"no lstm-export beside {sys.executable}: run this with the venv's python"
        )
    print(f"running lstm-export demo {shlex.join(args)} in {workdir} ...", file=sys.stderr)
    code, output = _run([str(exe), "demo", *args], workdir, _environment(), timeout)
    log = workdir / DEMO_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output, encoding="utf-8")
    if code != 0:
        tail = "\n".join(output_lines(output)[-8:])
        raise ReadmeError(f"lstm-export demo exited {code} (output in {log}):\n{tail}")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename (same folder, same mode)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 listing what differs")
    mode.add_argument("--write", action="store_true", help="rewrite the README in place")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT, help="folder holding runs/demo (default: the repo)"
    )
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="for the size figures")
    parser.add_argument("--demo", action="store_true", help="run lstm-export demo there first")
    parser.add_argument("--demo-args", default="", help='e.g. "--epochs 1 --sample-images 200"')
    parser.add_argument("--skip-figures", action="store_true", help="only the output blocks")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per block")
    parser.add_argument("--dump", type=Path, default=None, help="write every output, numbered")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = args.workdir.resolve()
    text = args.readme.read_text(encoding="utf-8")
    try:
        if args.demo:
            run_demo(workdir, shlex.split(args.demo_args), args.timeout)
        result = regenerate(text, block_runner(workdir, args.timeout), workdir, args.dump)
        if not args.skip_figures and not result.problems:
            apply_figures(result, args.venv)
            result.problems += unwritten_files(result.text, workdir / "runs" / "demo")
    except ReadmeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _report(result, args.readme, text, write=args.write)


def _report(result: Result, readme: Path, old_text: str, *, write: bool) -> int:
    significant = [c for c in result.changes if c.significant]
    timing_only = [c for c in result.changes if not c.significant and c.old != c.new]
    for change in significant:
        print(change.describe())
    for problem in result.problems:
        print(f"problem: {problem}")
    print(
        f"{len(result.changes)} blocks and figures: {len(significant)} differ, "
        f"{len(timing_only)} differ only in timings, {len(result.problems)} problems"
    )
    if write and result.text != old_text:
        write_atomically(readme, result.text)
        print(f"wrote {readme}")
    errors = [c for c in significant if c.error is not None]
    if write:
        return 1 if errors or result.problems else 0
    return 1 if significant or result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
