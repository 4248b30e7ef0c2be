"""``lstm-export shapes``: what each ``nn.LSTM`` argument means, and the shapes it gives, measured.

For a checkpoint (or run folder) the model is run once on ``batch`` x ``seq_len`` rows of pixels
from a seeded random initial state, with a hook on the LSTM, and the report lists:

* the LSTM's arguments (``input_size`` ... ``proj_size``) with their values and meaning;
* every tensor (input, h_0, c_0, output, h_n, c_n, logits) with its shape formula, the shape the
  formula gives for this model and the shape measured on the run;
* identities checked on the numbers of that run: the forward direction's last output step is
  the top layer's forward ``h_n``; for a bidirectional LSTM the backward direction's first
  output step is its ``h_n`` (it reads the rows from the last one); ``batch_first`` only
  transposes (an LSTM with the same weights and the other layout gives the transposed output
  and the same states); a missing initial state is zeros; the classifier reads the last step.

For an ``.onnx`` or ``.ts`` file the arguments come from its ``model_config`` metadata and only
what the file shows can be measured: the input it accepts and the outputs it returns (``h_0``,
``c_0``, ``h_n``, ``c_n`` for a ``--with-state`` file, with the identities that need only
those: zeros give the stateless answer, and rows fed in two chunks with the state carried give
the answer of all rows at once).

A measured shape that differs from its formula, or an identity that does not hold, is a
problem: :func:`check_shapes` raises ValidationError naming each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError, ModelLoadError, ValidationError

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
    "bidirectional": "D = 2: each layer also reads the rows from last to first; outputs of both "
    "directions are concatenated",
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
            f"{t.name} measured {_shape(t.measured)}, but {t.formula} = {_shape(t.expected)}"
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


def _shape(dims: list[int] | None) -> str:
    return "-" if dims is None else "(" + ", ".join(str(d) for d in dims) + ")"


def _diff(*pairs: tuple[Any, Any]) -> float:
    """Largest absolute difference over tensor (or array) pairs of the same shape."""
    worst = 0.0
    for a, b in pairs:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
    return worst


# -- formulas ----------------------------------------------------------------------------------------
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


def _arguments(config: ModelConfig) -> list[Argument]:
    values = {
        "input_size": config.input_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "bias": config.bias,
        "batch_first": config.batch_first,
        "dropout": config.dropout,
        "bidirectional": config.bidirectional,
        "proj_size": config.proj_size,
    }
    return [Argument(name, value, MEANINGS[name]) for name, value in values.items()]


def _pixels(batch: int, seq_len: int, features: int) -> np.ndarray:
    return np.random.default_rng(0).random((batch, seq_len, features), dtype=np.float32)


def _random_state(config: ModelConfig, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded non-zero initial state, so no identity rests on zeros."""
    rng = np.random.default_rng(1)
    layers = config.state_layers
    h = rng.normal(0, 0.5, (layers, batch, config.output_size)).astype(np.float32)
    c = rng.normal(0, 0.5, (layers, batch, config.hidden_size)).astype(np.float32)
    return h, c


# -- checkpoints -------------------------------------------------------------------------------------
def _measure_checkpoint(path: Path, batch: int, seq_len: int) -> ShapesReport:
    import torch

    from lstm_export.export.source import load_source

    source = load_source(path)
    model, config = source.model.eval(), source.config
    symbols = _symbols(config, batch, seq_len)
    formulas = _formulas(config, symbols)
    x = torch.from_numpy(_pixels(batch, seq_len, config.input_size))
    h_0, c_0 = (torch.from_numpy(a) for a in _random_state(config, batch))
    seen: dict[str, Any] = {}

    def hook(module: Any, args: Any, output: Any) -> None:
        seen["input"], (seen["h_0"], seen["c_0"]) = args[0], args[1]
        seen["output"], (seen["h_n"], seen["c_n"]) = output

    handle = model.lstm.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits, _, _ = model.forward_with_state(x, h_0, c_0)
    finally:
        handle.remove()
    seen["logits"] = logits
    tensors = []
    for name, (formula, dims) in formulas.items():
        note = ""
        if name == "input" and not config.batch_first:
            note = "the model's pixels (N, T, H_in), transposed for the LSTM"
        elif name in ("h_0", "c_0"):
            note = "fed (seeded random, not zeros)"
        tensors.append(TensorShape(name, formula, dims, list(seen[name].shape), note))
    identities = _checkpoint_identities(model, config, seen)
    return ShapesReport(
        path=source.path,
        kind="checkpoint",
        batch=batch,
        seq_len=seq_len,
        config=config.to_dict(),
        symbols=symbols,
        arguments=_arguments(config),
        tensors=tensors,
        identities=identities,
        notes=[f"measured by running {source.path.name} once, eval mode, on the CPU"],
    )


def _checkpoint_identities(model: Any, config: ModelConfig, seen: dict[str, Any]) -> list[Identity]:
    import copy

    import torch

    layers, d, h_out = config.num_layers, config.directions, config.output_size
    out = seen["output"] if config.batch_first else seen["output"].transpose(0, 1)  # (N, T, .)
    by_layer = seen["h_n"].view(layers, d, -1, h_out)  # (L, D, N, H_out)
    step = "output[:, -1" if config.batch_first else "output[-1, :"
    first = "output[:, 0" if config.batch_first else "output[0, :"
    top = (layers - 1) * d
    found = [
        Identity(
            "last step is h_n",
            f"{step}, :H_out] == h_n[{top}]: the forward direction's last output step is the "
            "top layer's forward h_n",
            _diff((out[:, -1, :h_out], by_layer[-1, 0])),
        )
    ]
    if config.bidirectional:
        found.append(
            Identity(
                "backward first step is its h_n",
                f"{first}, H_out:] == h_n[{top + 1}]: the backward direction ends at the first "
                "row, so its first output step is its h_n",
                _diff((out[:, 0, h_out:], by_layer[-1, 1])),
            )
        )
    twin = copy.deepcopy(model.lstm)
    twin.batch_first = not config.batch_first
    hx = (seen["h_0"], seen["c_0"])
    with torch.inference_mode():
        t_out, (t_h, t_c) = twin(seen["input"].transpose(0, 1), hx)
        bare_out, (bare_h, bare_c) = model.lstm(seen["input"])
        zeros = (torch.zeros_like(seen["h_0"]), torch.zeros_like(seen["c_0"]))
        zero_out, (zero_h, zero_c) = model.lstm(seen["input"], zeros)
        head = model.fc(out[:, -1, :])
    found.append(
        Identity(
            "batch_first only transposes",
            f"nn.LSTM(batch_first={not config.batch_first}) with the same weights on "
            "input.transpose(0, 1) gives output.transpose(0, 1) and the same h_n, c_n",
            _diff((t_out.transpose(0, 1), seen["output"]), (t_h, seen["h_n"]), (t_c, seen["c_n"])),
        )
    )
    found.append(
        Identity(
            "no state is zeros",
            "lstm(input) == lstm(input, (zeros, zeros)): output, h_n and c_n",
            _diff((bare_out, zero_out), (bare_h, zero_h), (bare_c, zero_c)),
        )
    )
    found.append(
        Identity(
            "the head reads the last step",
            "logits == fc(output at the last step, both directions)",
            _diff((head, seen["logits"])),
        )
    )
    return found


# -- exported files ----------------------------------------------------------------------------------
def _file_config(meta: dict[str, str], path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads(meta["model_config"]))
    except KeyError:
        raise ModelLoadError(
            f"{path} has no model_config metadata: it was not exported by lstm-export"
        ) from None
    except (ValueError, TypeError, ConfigError) as exc:
        raise ModelLoadError(f"{path} has an unreadable model_config: {exc}") from exc


def _measure_file(path: Path, batch: int, seq_len: int) -> ShapesReport:
    from lstm_export.infer.base import LstmState
    from lstm_export.infer.registry import make_runner

    runner = make_runner(path, device="cpu")
    with runner:
        meta = runner.metadata
        config = _file_config(meta, path)
        fixed = runner.name == "onnxruntime" and meta.get("seq_len", "28") != "any"
        if fixed and seq_len != DEFAULT_SEQ_LEN:
            raise ConfigError(
                f"{path.name} takes 28 rows only (exported with a fixed sequence length); "
                f"{seq_len} rows need a file exported with a dynamic sequence length or state"
            )
        symbols = _symbols(config, batch, seq_len)
        formulas = _formulas(config, symbols)
        x = _pixels(batch, seq_len, config.input_size)
        logits = runner.infer(x)
        measured: dict[str, list[int] | None] = {"logits": list(logits.shape)}
        measured["input"] = [batch, seq_len, config.input_size]  # accepted by the file
        identities = []
        inside = "inside the graph (measured on the checkpoint)"
        if runner.streams:
            h_0, c_0 = _random_state(config, batch)
            _, state = runner.step(x, LstmState(h_0, c_0))
            measured.update(h_0=list(h_0.shape), c_0=list(c_0.shape), h_n=list(state.h.shape))
            measured["c_n"] = list(state.c.shape)
            zero_logits, zero_state = runner.step(x)
            identities.append(
                Identity(
                    "no state is zeros",
                    "the file's stateless answer (infer) == its answer from h_0 = c_0 = 0",
                    _diff((logits, zero_logits)),
                )
            )
            if seq_len >= 2:
                half = seq_len // 2
                _, mid = runner.step(x[:, :half])
                end_logits, end = runner.step(x[:, half:], mid)
                identities.append(
                    Identity(
                        "the state carries",
                        f"rows fed as {half} + {seq_len - half} with the state carried == all "
                        f"{seq_len} at once: logits, h_n and c_n",
                        _diff(
                            (end_logits, zero_logits), (end.h, zero_state.h), (end.c, zero_state.c)
                        ),
                    )
                )
            state_note = ""
        else:
            state_note = "not in this file (--with-state adds it)"
    tensors = []
    for name, (formula, dims) in formulas.items():
        if name == "input":
            formula, dims = "(N, T, H_in)", [batch, seq_len, config.input_size]
            note = "fed and accepted" + (
                "; the LSTM inside gets its transpose" if not config.batch_first else ""
            )
        elif name == "output":
            note = inside
        elif name in ("h_0", "c_0", "h_n", "c_n"):
            note = state_note or ("fed (seeded random)" if name in ("h_0", "c_0") else "returned")
        else:
            note = "returned"
        tensors.append(TensorShape(name, formula, dims, measured.get(name), note))
    kind = "onnx" if runner.name == "onnxruntime" else runner.name
    return ShapesReport(
        path=path,
        kind=kind,
        batch=batch,
        seq_len=seq_len,
        config=config.to_dict(),
        symbols=symbols,
        arguments=_arguments(config),
        tensors=tensors,
        identities=identities,
        notes=[
            "arguments from the file's model_config metadata; shapes measured by running the "
            f"file with {runner.description}",
            "the LSTM's own identities need its output sequence: run shapes on the checkpoint",
        ],
    )


def measure_shapes(
    model: Path, batch: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN
) -> ShapesReport:
    """The report for a checkpoint, run folder, ``.onnx`` or ``.ts`` file (nothing raised for a
    failed identity: see :func:`check_shapes`)."""
    if batch < 1 or seq_len < 1:
        raise ConfigError(f"batch and seq_len must be >= 1, got {batch} and {seq_len}")
    path = Path(model)
    if path.suffix.lower() in (".onnx", ".ts", ".torchscript"):
        if not path.is_file():
            raise ModelLoadError(f"model file {path} not found")
        return _measure_file(path, batch, seq_len)
    return _measure_checkpoint(path, batch, seq_len)


def check_shapes(report: ShapesReport) -> ShapesReport:
    """``report`` itself, or ValidationError naming every shape and identity that failed."""
    if report.problems:
        raise ValidationError(f"shapes of {report.path}: " + "; ".join(report.problems))
    return report
