"""``lstm-export shapes``: what each ``nn.LSTM`` argument means, and the shapes it gives, measured.

A checkpoint is run once on ``batch`` x ``seq_len`` rows from a seeded random initial state, with
a hook on the LSTM: every tensor's shape formula, the shape it gives and the shape measured, and
identities checked on the run's numbers. An ``.onnx`` or ``.ts`` file shows its input and outputs
and, with ``--with-state``, the identities that need only those. :func:`check_shapes` raises
ValidationError naming every shape and identity that fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError, ModelLoadError, ValidationError
from lstm_export.parity import max_abs_diff

DEFAULT_BATCH = 3
DEFAULT_SEQ_LEN = 28
#: largest absolute difference an identity may show (most are exact: the same numbers twice)
TOLERANCE = 1e-5

MEANINGS: dict[str, str] = {
    "input_size": "H_in: features per step (the 28 pixels of one image row)",
    "hidden_size": "H_cell: width of the cell state c, and of h unless proj_size is set",
    "num_layers": "L: LSTMs stacked; layer l > 0 reads layer l-1's output sequence",
    "bias": "whether each gate adds the biases b_ih and b_hh",
    "batch_first": "input and output are (N, T, .) instead of (T, N, .); h and c never change",
    "dropout": "dropout on every layer's output but the last, in training only (none in eval "
    "or in an exported file)",
    "bidirectional": "D = 2 if bidirectional else 1: with D = 2 each layer also reads the rows "
    "from last to first, and the outputs of both directions are concatenated",
    "proj_size": "H_out: h is projected to this width (0: no projection, H_out = H_cell)",
}


@dataclass(frozen=True)
class Argument:
    """One ``nn.LSTM`` argument: its value in this model and what it does."""

    name: str
    value: Any
    meaning: str


@dataclass(frozen=True)
class TensorShape:
    """One tensor: its shape formula, the shape that gives here, and the shape measured.

    ``measured`` is None when this model or file does not expose the tensor (``note`` says why).
    """

    name: str
    formula: str
    expected: list[int]
    measured: list[int] | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.measured is None or self.measured == self.expected


@dataclass(frozen=True)
class Identity:
    """A relation between tensors, checked on the run's numbers."""

    name: str
    statement: str
    max_abs_diff: float
    tolerance: float = TOLERANCE

    @property
    def holds(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)


@dataclass
class ShapesReport:
    """What ``lstm-export shapes`` shows for one model."""

    path: Path
    kind: str
    batch: int
    seq_len: int
    config: dict[str, Any]
    symbols: dict[str, int]
    arguments: list[Argument]
    tensors: list[TensorShape]
    identities: list[Identity]
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        found = [
            f"{t.name} measured {dims_text(t.measured)}, but {t.formula} = {dims_text(t.expected)}"
            for t in self.tensors
            if not t.ok
        ]
        found += [
            f"identity {i.name} does not hold ({i.statement}): max |diff| {i.max_abs_diff:.3g} "
            f"> {i.tolerance:.0e}"
            for i in self.identities
            if not i.holds
        ]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def dims_text(dims: list[int] | None) -> str:
    return "-" if dims is None else "(" + ", ".join(str(d) for d in dims) + ")"


def _symbols(config: ModelConfig, batch: int, seq_len: int) -> dict[str, int]:
    return {
        "N": batch,
        "T": seq_len,
        "H_in": config.input_size,
        "H_cell": config.hidden_size,
        "H_out": config.output_size,
        "L": config.num_layers,
        "D": config.directions,
        "C": config.num_classes,
    }


def _formulas(config: ModelConfig, s: dict[str, int]) -> dict[str, tuple[str, list[int]]]:
    """name -> (formula, dims) in PyTorch's notation for the LSTM's own tensors."""
    n, t, layers = s["N"], s["T"], s["D"] * s["L"]
    seq = ("N, T", [n, t]) if config.batch_first else ("T, N", [t, n])
    return {
        "input": (f"({seq[0]}, H_in)", [*seq[1], s["H_in"]]),
        "h_0": ("(D*L, N, H_out)", [layers, n, s["H_out"]]),
        "c_0": ("(D*L, N, H_cell)", [layers, n, s["H_cell"]]),
        "output": (f"({seq[0]}, D*H_out)", [*seq[1], s["D"] * s["H_out"]]),
        "h_n": ("(D*L, N, H_out)", [layers, n, s["H_out"]]),
        "c_n": ("(D*L, N, H_cell)", [layers, n, s["H_cell"]]),
        "logits": ("(N, C)", [n, s["C"]]),
    }


def _pixels(batch: int, seq_len: int, features: int) -> np.ndarray:
    return np.random.default_rng(0).random((batch, seq_len, features), dtype=np.float32)


def _random_state(config: ModelConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded non-zero initial state, so no identity rests on zeros."""
    rng = np.random.default_rng(1)
    layers = config.state_layers
    h = rng.normal(0, 0.5, (layers, batch, config.output_size)).astype(np.float32)
    c = rng.normal(0, 0.5, (layers, batch, config.hidden_size)).astype(np.float32)
    return h, c


#: a measurer's path, kind, config, arrays seen by tensor name, notes, identities, report notes
_Measured = tuple[Path, str, ModelConfig, dict[str, Any], dict[str, str], list[Identity], list[str]]


def _measure_checkpoint(path: Path, batch: int, seq_len: int) -> _Measured:
    import torch

    from lstm_export.export.source import load_source

    source = load_source(path)
    model, config = source.model.eval(), source.model.config
    x = torch.from_numpy(_pixels(batch, seq_len, config.input_size))
    h_0, c_0 = (torch.from_numpy(a) for a in _random_state(config, batch))
    seen: dict[str, Any] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        seen["input"], (seen["h_0"], seen["c_0"]) = args[0], args[1]
        seen["output"], (seen["h_n"], seen["c_n"]) = output

    with model.lstm.register_forward_hook(hook), torch.inference_mode():
        seen["logits"], _, _ = model.forward_with_state(x, h_0, c_0)
    notes = dict.fromkeys(("h_0", "c_0"), "fed (seeded random, not zeros)")
    if not config.batch_first:
        notes["input"] = "the model's pixels (N, T, H_in), transposed for the LSTM"
    identities = _checkpoint_identities(model, config, seen)
    ran = [f"measured by running {source.path.name} once, eval mode, on the CPU"]
    return source.path, "checkpoint", config, seen, notes, identities, ran


def _checkpoint_identities(model: Any, config: ModelConfig, seen: dict[str, Any]) -> list[Identity]:
    import copy

    import torch

    layers, d, h_out = config.num_layers, config.directions, config.output_size
    out = seen["output"] if config.batch_first else seen["output"].transpose(0, 1)  # (N, T, .)
    by_layer = seen["h_n"].view(layers, d, -1, h_out)  # (L, D, N, H_out)
    last, first = ("[:, -1", "[:, 0") if config.batch_first else ("[-1, :", "[0, :")
    top = (layers - 1) * d
    twin = copy.deepcopy(model.lstm)
    twin.batch_first = not config.batch_first
    with torch.inference_mode():
        t_out, (t_h, t_c) = twin(seen["input"].transpose(0, 1), (seen["h_0"], seen["c_0"]))
        bare_out, (bare_h, bare_c) = model.lstm(seen["input"])
        zeros = (torch.zeros_like(seen["h_0"]), torch.zeros_like(seen["c_0"]))
        zero_out, (zero_h, zero_c) = model.lstm(seen["input"], zeros)
        head = model.fc(out[:, -1, :])
    checks = [
        (
            "last step is h_n",
            f"output{last}, :H_out] == h_n[{top}]: the forward direction's last output step is "
            "the top layer's forward h_n",
            ([out[:, -1, :h_out]], [by_layer[-1, 0]]),
        ),
        (
            "backward first step is its h_n",
            f"output{first}, H_out:] == h_n[{top + 1}]: the backward direction ends at the first "
            "row, so its first output step is its h_n",
            ([out[:, 0, h_out:]], [by_layer[-1, 1]]) if config.bidirectional else None,
        ),
        (
            "batch_first only transposes",
            f"nn.LSTM(batch_first={not config.batch_first}) with the same weights on "
            "input.transpose(0, 1) gives output.transpose(0, 1) and the same h_n, c_n",
            ([t_out.transpose(0, 1), t_h, t_c], [seen["output"], seen["h_n"], seen["c_n"]]),
        ),
        (
            "no state is zeros",
            "lstm(input) == lstm(input, (zeros, zeros)): output, h_n and c_n",
            ([bare_out, bare_h, bare_c], [zero_out, zero_h, zero_c]),
        ),
        (
            "the head reads the last step",
            "logits == fc(output at the last step, both directions)",
            ([head], [seen["logits"]]),
        ),
    ]
    return [Identity(name, text, max_abs_diff(*pairs)) for name, text, pairs in checks if pairs]


def _file_config(meta: dict[str, str], path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads(meta["model_config"]))
    except KeyError:
        raise ModelLoadError(
            f"{path} has no model_config metadata: it was not exported by lstm-export"
        ) from None
    except (ValueError, TypeError, ConfigError) as exc:
        raise ModelLoadError(f"{path} has an unreadable model_config: {exc}") from exc


def _measure_file(path: Path, batch: int, seq_len: int) -> _Measured:
    from lstm_export.infer.registry import make_runner

    with make_runner(path, device="cpu") as runner:
        config = _file_config(runner.metadata, path)
        fixed = runner.name == "onnxruntime" and runner.metadata.get("seq_len", "28") != "any"
        if fixed and seq_len != DEFAULT_SEQ_LEN:
            raise ConfigError(
                f"{path.name} takes 28 rows only (exported with a fixed sequence length); "
                f"{seq_len} rows need a file exported with a dynamic sequence length or state"
            )
        x = _pixels(batch, seq_len, config.input_size)
        seen = {"input": x, "logits": runner.infer(x)}  # the input: accepted by the file
        identities = _state_identities(runner, config, seen)
        streams, description = runner.streams, runner.description
    notes = dict.fromkeys(("h_0", "c_0"), "fed (seeded random)")
    notes |= dict.fromkeys(("h_n", "c_n", "logits"), "returned")
    if not streams:
        notes |= dict.fromkeys(
            ("h_0", "c_0", "h_n", "c_n"), "not in this file (--with-state adds it)"
        )
    transposed = "" if config.batch_first else "; the LSTM inside gets its transpose"
    notes["input"] = "fed and accepted" + transposed
    notes["output"] = "inside the graph (measured on the checkpoint)"
    ran = [
        "arguments from the file's model_config metadata; shapes measured by running the "
        f"file with {description}",
        "the LSTM's own identities need its output sequence: run shapes on the checkpoint",
    ]
    kind = "onnx" if runner.name == "onnxruntime" else runner.name
    return path, kind, config, seen, notes, identities, ran


def _state_identities(runner: Any, config: ModelConfig, seen: dict[str, Any]) -> list[Identity]:
    """For a file that takes a state: its arrays into ``seen``, and the identities that need only
    the file (zeros are the stateless answer; the state carries between two chunks)."""
    from lstm_export.infer.base import LstmState

    if not runner.streams:
        return []
    x = seen["input"]
    h_0, c_0 = _random_state(config, x.shape[0])
    _, state = runner.step(x, LstmState(h_0, c_0))
    seen.update(h_0=h_0, c_0=c_0, h_n=state.h, c_n=state.c)
    zero_logits, zero = runner.step(x)
    found = [
        Identity(
            "no state is zeros",
            "the file's stateless answer (infer) == its answer from h_0 = c_0 = 0",
            max_abs_diff([seen["logits"]], [zero_logits]),
        )
    ]
    rows = x.shape[1]
    if rows >= 2:
        half = rows // 2
        _, mid = runner.step(x[:, :half])
        end_logits, end = runner.step(x[:, half:], mid)
        found.append(
            Identity(
                "the state carries",
                f"rows fed as {half} + {rows - half} with the state carried == all {rows} at "
                "once: logits, h_n and c_n",
                max_abs_diff([end_logits, end.h, end.c], [zero_logits, zero.h, zero.c]),
            )
        )
    return found


def measure_shapes(
    model: Path, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN
) -> ShapesReport:
    """The report for a checkpoint, run folder, ``.onnx`` or ``.ts`` file (nothing raised for a
    failed identity: see :func:`check_shapes`)."""
    if batch < 1 or seq_len < 1:
        raise ConfigError(f"batch and seq_len must be >= 1, got {batch} and {seq_len}")
    file = Path(model).suffix.lower() in (".onnx", ".ts", ".torchscript")
    measure = _measure_file if file else _measure_checkpoint  # the runner says if it is not found
    path, kind, config, seen, notes, identities, ran = measure(Path(model), batch, seq_len)
    symbols = _symbols(config, batch, seq_len)
    formulas = _formulas(config, symbols)
    if file:  # a file takes (N, T, H_in) whatever batch_first says
        formulas["input"] = ("(N, T, H_in)", [batch, seq_len, config.input_size])
    measured = {name: list(array.shape) for name, array in seen.items()}
    tensors = [
        TensorShape(name, formula, dims, measured.get(name), notes.get(name, ""))
        for name, (formula, dims) in formulas.items()
    ]
    arguments = [Argument(name, getattr(config, name), text) for name, text in MEANINGS.items()]
    return ShapesReport(
        path, kind, batch, seq_len, config.to_dict(), symbols, arguments, tensors, identities, ran
    )


def check_shapes(report: ShapesReport) -> None:
    """ValidationError naming every shape and identity of ``report`` that failed."""
    if report.problems:
        raise ValidationError(f"shapes of {report.path}: " + "; ".join(report.problems))
