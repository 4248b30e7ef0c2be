"""``classify_folder``: rows, accuracy, bad files, the pipeline's plans, and atomic writers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _infer_helpers import png_bytes, uint8_test_set, write_digits
from lstm_export.data.preprocess import to_model_input
from lstm_export.errors import InputError, OutputError
from lstm_export.infer.classify import Prediction, classify_folder
from lstm_export.infer.pipeline import Plan, plan_run
from lstm_export.infer.registry import load_runner
from lstm_export.infer.report import save_confusion_png
from lstm_export.infer.rows import Confusion, imagefolder_labels
from lstm_export.infer.walk import walk_images
from lstm_export.infer.writers import OutputFormat, open_rows, resolve_format

N = 300


@pytest.fixture(scope="module")
def labelled(
    mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray, np.ndarray]:
    """N test digits as PNGs in class folders, with their uint8 images and labels."""
    images, labels = uint8_test_set(mnist_dir)
    folder = tmp_path_factory.mktemp("labelled")
    write_digits(folder, images[:N], labels[:N])
    return folder, images[:N], labels[:N]


@pytest.fixture(scope="module")
def expected(
    trained_checkpoint: Path, labelled: tuple[Path, np.ndarray, np.ndarray]
) -> dict[str, int]:
    """Relative path -> the class the model gives the digit's array directly."""
    _, images, labels = labelled
    with load_runner(trained_checkpoint, device="cpu") as runner:
        predicted = runner.infer(to_model_input(images)).argmax(1)
    pairs = zip(labels, predicted, strict=True)
    return {f"{label}/{i:05d}.png": int(p) for i, (label, p) in enumerate(pairs)}


def test_labelled_folder_gives_the_models_own_accuracy(
    trained_checkpoint: Path,
    labelled: tuple[Path, np.ndarray, np.ndarray],
    expected: dict[str, int],
) -> None:
    folder, _, labels = labelled
    result = classify_folder(trained_checkpoint, folder, device="cpu")
    rows, summary = result.rows, result.summary
    assert [r.path for r in rows] == sorted(expected, key=lambda p: tuple(p.split("/")))
    assert {r.path: int(r.prediction or -1) for r in rows} == expected
    assert all(r.error is None and r.label == r.path.split("/")[0] for r in rows)
    assert all(0.1 <= (r.confidence or 0) <= 1.0 for r in rows)
    truth = np.array([int(p.split("/")[0]) for p in expected])
    want = np.mean([expected[p] == int(p.split("/")[0]) for p in expected])
    assert summary.labelled and summary.accuracy == pytest.approx(want)
    assert summary.confusion is not None and summary.confusion.total == N
    assert (
        summary.confusion.matrix.sum(axis=1).tolist() == np.bincount(truth, minlength=10).tolist()
    )
    assert (summary.images, summary.classified, summary.errors) == (N, N, 0)
    assert summary.images_per_second > 0
    assert json.loads(json.dumps(summary.to_dict()))["accuracy"] == pytest.approx(want)
    assert len(labels) == N


@pytest.mark.parametrize(("workers", "streams"), [(0, 1), (1, 1), (1, 3), (2, 2)])
def test_every_pipeline_plan_gives_the_same_rows(
    workers: int,
    streams: int,
    trained_checkpoint: Path,
    labelled: tuple[Path, np.ndarray, np.ndarray],
    expected: dict[str, int],
) -> None:
    """Inline; a decode thread with 1 or 3 inference streams; two decode processes.

    Small batches, so that batches finish out of order and must be put back in order.
    """
    folder, _, _ = labelled
    result = classify_folder(
        trained_checkpoint,
        folder,
        device="cpu",
        workers=workers,
        threads=1,
        streams=streams,
        batch_size=16,
    )
    from lstm_export.devices import usable_cores

    # asked-for streams and workers are capped at the cores there are
    cores = usable_cores()
    assert result.summary.plan == Plan(min(workers, cores), 1, 16, min(streams, cores))
    assert [r.path for r in result.rows] == sorted(expected, key=lambda p: tuple(p.split("/")))
    assert {r.path: int(r.prediction or -1) for r in result.rows} == expected


def test_pipeline_stops_its_threads_when_closed_early(tmp_path: Path) -> None:
    """A consumer that stops (an error while writing, Ctrl-C) leaves no thread behind."""
    import threading

    from lstm_export.infer.pipeline import pipelined

    for i in range(40):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    paths = [str(p) for p in sorted(tmp_path.iterdir())]
    before = threading.active_count()
    results = pipelined(paths, Plan(1, 1, 4, 2), lambda digits, errors: len(errors))
    assert next(results) == ([None] * 4, 4)
    results.close()
    assert threading.active_count() == before


def test_pipeline_reraises_an_inference_failure(tmp_path: Path) -> None:
    from lstm_export.infer.pipeline import pipelined

    for i in range(12):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    paths = [str(p) for p in sorted(tmp_path.iterdir())]

    def boom(digits: np.ndarray, errors: list[str | None]) -> int:
        raise InputError("model failed")

    with pytest.raises(InputError, match="model failed"):
        list(pipelined(paths, Plan(1, 1, 4, 2), boom))


def test_bad_files_get_error_rows_and_the_run_goes_on(
    trained_checkpoint: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    images, labels = uint8_test_set(mnist_dir)
    write_digits(tmp_path, images[:20], labels[:20])
    good = png_bytes(images[0])
    bad = {
        "3/empty.png": b"",
        "3/truncated.png": good[: len(good) // 2],
        "3/text.jpg": b"not a jpeg",
        "7/garbage.PNG": bytes(range(256)) * 4,
    }
    for name, data in bad.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "3" / "broken link.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "3" / "notes.txt").write_text("skipped")
    (tmp_path / "3" / ".hidden.png").write_bytes(good)
    seen: list[int] = []
    result = classify_folder(
        trained_checkpoint,
        tmp_path,
        device="cpu",
        batch_size=8,
        on_batch=lambda b: seen.append(len(b)),
    )
    rows = {r.path: r for r in result.rows}
    assert len(result.rows) == len(rows) == 25 and sum(seen) == 25  # each image file once
    for name in [*bad, "3/broken link.png"]:
        assert rows[name].error and rows[name].prediction is None and rows[name].confidence is None
    assert "empty" in (rows["3/empty.png"].error or "")
    assert "truncated" in (rows["3/truncated.png"].error or "")
    assert "broken symbolic link" in (rows["3/broken link.png"].error or "")
    s = result.summary
    assert (s.images, s.classified, s.errors, s.skipped, s.hidden) == (25, 20, 5, 1, 1)
    assert s.confusion is not None and s.confusion.total == 20  # errors not counted


def test_runner_given_is_used_and_not_closed(
    trained_checkpoint: Path, labelled: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    folder, _, _ = labelled
    with load_runner(trained_checkpoint, device="cpu") as runner:
        result = classify_folder(runner, folder, recursive=False)
        assert runner._loaded
        assert result.rows == [] and result.summary.images == 0
        one = classify_folder(runner, folder / "7" / "00000.png", probabilities=True)
    assert len(one.rows) == 1 and one.rows[0].path == "00000.png"
    probs = one.rows[0].probabilities
    assert probs is not None and len(probs) == 10 and sum(probs) == pytest.approx(1.0)
    assert max(probs) == pytest.approx(one.rows[0].confidence)
    assert not one.summary.labelled  # a single file carries no label


def test_imagefolder_layout_detection(tmp_path: Path) -> None:
    names = [str(d) for d in range(10)]
    for rel in ("3/a.png", "3/deep/b.png", "7/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    labels, note = imagefolder_labels(walk_images(tmp_path), names)
    assert labels == [3, 3, 7] and "2 of 10" in note
    (tmp_path / "loose.png").write_bytes(b"x")
    labels, note = imagefolder_labels(walk_images(tmp_path), names)
    assert labels is None and "loose.png" in note
    (tmp_path / "loose.png").unlink()
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "d.png").write_bytes(b"x")
    labels, note = imagefolder_labels(walk_images(tmp_path), names)
    assert labels is None and "cats" in note


@pytest.mark.parametrize(
    ("cores", "fit", "device", "workers", "threads", "streams", "batch"),
    [
        (1, False, "cpu", 1, 1, 1, 64),
        (
            2,
            False,
            "cpu",
            1,
            1,
            2,
            64,
        ),  # this machine: decode thread, ORT thread + idle-time stream
        (2, True, "cpu", 2, 1, 2, 64),  # fit is dear: decode in processes
        (4, False, "cpu", 2, 2, 1, 64),
        (16, False, "cpu", 6, 10, 1, 64),
        (64, True, "cpu", 8, 56, 1, 64),
        (8, False, "cuda", 7, 1, 1, 512),
    ],
)
def test_plan_shares_the_cores(
    cores: int, fit: bool, device: str, workers: int, threads: int, streams: int, batch: int
) -> None:
    plan = plan_run(cores=cores, fit=fit, device=device)
    assert plan == Plan(workers, threads, batch, streams)
    assert plan_run(cores=cores, workers=0).threads == cores
    many = max(cores, 5)  # what is asked for is capped at the cores
    assert plan_run(cores=many, workers=3, threads=5, streams=2) == Plan(3, 5, 64, 2)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(InputError):
        plan_run(batch_size=0)
    with pytest.raises(InputError):
        plan_run(workers=-1)


# -- writers ---------------------------------------------------------------------------------------
ROWS = [
    Prediction("0/a, b.png", "0", 0.9, None, "0", tuple([0.9] + [0.1 / 9] * 9)),
    Prediction('1/"q".png', None, None, "empty file (0 bytes)", "1", None),
    Prediction("2/ünï.png", "7", 0.5, None, "2", tuple([0.05] * 9 + [0.55])),
]


def test_csv_rows_quote_awkward_paths_and_keep_empty_errors(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    names = [str(d) for d in range(10)]
    with open_rows(out, labelled=True, class_names=names) as writer:
        writer.write(ROWS)
    with open(out, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["path"] for r in table] == [r.path for r in ROWS]
    assert list(table[0])[:5] == ["path", "label", "prediction", "confidence", "error"]
    assert table[0]["error"] == "" and table[1]["error"] == "empty file (0 bytes)"
    assert table[1]["prediction"] == "" and table[1]["p_0"] == ""
    assert float(table[2]["p_9"]) == pytest.approx(0.55)


def test_jsonl_rows(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    with open_rows(out, labelled=False) as writer:
        writer.write(ROWS)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records[0] == {"path": "0/a, b.png", "prediction": "0", "confidence": 0.9, "error": None}
    assert records[1]["error"] == "empty file (0 bytes)" and records[1]["prediction"] is None


def test_output_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("previous run\n")
    with pytest.raises(RuntimeError), open_rows(out, labelled=False) as writer:
        writer.write(ROWS[:1])
        raise RuntimeError("interrupted half way")
    assert out.read_text() == "previous run\n"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temporary left behind


def test_output_format_from_suffix_or_flag(tmp_path: Path) -> None:
    assert resolve_format(tmp_path / "x.CSV") == OutputFormat.csv
    assert resolve_format(tmp_path / "x.jsonl") == OutputFormat.jsonl
    assert resolve_format(None) == OutputFormat.csv
    assert resolve_format(tmp_path / "x.txt", "jsonl") == OutputFormat.jsonl
    with pytest.raises(OutputError, match="or name the format"):
        resolve_format(tmp_path / "x.txt")


def test_confusion_matrix_and_png(tmp_path: Path) -> None:
    c = Confusion([str(d) for d in range(3)])
    c.add([0, 0, 1, 2, 2], [0, 1, 1, 2, 0])
    assert c.matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert c.accuracy == pytest.approx(3 / 5)
    assert c.per_class_recall().tolist() == pytest.approx([0.5, 1.0, 0.5])
    png = save_confusion_png(c, tmp_path / "cm.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputError, match=r"\.png"):
        save_confusion_png(c, tmp_path / "cm.jpg")
    assert Confusion(["a"]).accuracy is None


def test_a_wide_confusion_matrix_is_printed_whole_on_a_narrow_console() -> None:
    """100k images make 6-digit cells: the table is wider than 80 columns, and a log file (or a
    narrow terminal) must still show every count, not "100…"."""
    import io

    from rich.console import Console

    from lstm_export.console import print_whole
    from lstm_export.infer.report import confusion_table

    c = Confusion([str(d) for d in range(10)])
    c.add(np.repeat(np.arange(10), 100_000), np.repeat(np.arange(10), 100_000))
    out = io.StringIO()
    narrow = Console(file=out, width=80)
    print_whole(narrow, confusion_table(c))
    rows = [line for line in out.getvalue().splitlines() if "100.0 %" in line]
    assert len(rows) == 10 and all(line.count("100000") == 1 for line in rows)
    assert "…" not in out.getvalue() and narrow.width == 80


def test_recorded_preprocessing_is_checked_against_ours() -> None:
    from lstm_export.data.preprocess import describe
    from lstm_export.infer.rows import check_preprocessing

    ours = describe()
    assert check_preprocessing({"preprocessing": json.dumps(ours)}) == []
    assert check_preprocessing({}) == [] and check_preprocessing({"preprocessing": "{oops"}) == []
    other = {**ours, "polarity": "dark digit on light background", "scale": "uint8 / 127.5"}
    problems = check_preprocessing({"preprocessing": json.dumps(other)})
    assert len(problems) == 2 and any("polarity" in p for p in problems)


class _Scores:
    """A stand-in runner that scores ``outputs`` classes and records ``class_names``."""

    def __init__(self, raw: str, outputs: int) -> None:
        from lstm_export.infer.base import class_names

        self.metadata = {"class_names": raw} if raw else {}
        self.class_names = class_names(raw)
        self.outputs = outputs
        self.classes = None  # not declared: counted on a blank digit
        self.path = Path("m.onnx")

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), self.outputs), np.float32)


def test_class_names_come_from_the_model_metadata() -> None:
    from lstm_export.infer.rows import class_names_of

    def names(raw: str, outputs: int) -> list[str]:
        return class_names_of(_Scores(raw, outputs))  # type: ignore[arg-type]

    assert names("zero,one,two", 3) == ["zero", "one", "two"]
    assert names('["a", "b"]', 2) == ["a", "b"]
    assert names("", 10) == [str(d) for d in range(10)]
    assert names("", 5) == [str(d) for d in range(5)]  # no names: indices, as many as scores


def test_a_model_scoring_other_classes_than_it_names_is_refused(
    make_checkpoint: Any, tmp_path: Path
) -> None:
    """A 5-output model whose metadata names the 10 digits: no rows, one clear error."""
    from lstm_export.errors import ModelLoadError
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.infer.classify import classify_folder
    from lstm_export.infer.rows import class_names_of

    with pytest.raises(ModelLoadError, match=r"scores 3 classes but its metadata names 2 \(a,b\)"):
        class_names_of(_Scores("a,b", 3))  # type: ignore[arg-type]
    onnx_path = export_onnx(make_checkpoint(num_classes=5), validate=False).path
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    with pytest.raises(ModelLoadError, match="scores 5 classes but its metadata names 10"):
        classify_folder(onnx_path, folder, device="cpu")
