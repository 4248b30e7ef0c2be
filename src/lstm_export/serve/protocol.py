"""Open Inference Protocol v2 (KServe, Triton) over REST: parse an infer request, encode its answer.

A request is JSON, or, with Triton's binary tensor data extension, JSON followed by raw tensor
bytes: the header ``Inference-Header-Content-Length`` gives the JSON's length, and each input
sent that way has ``parameters.binary_data_size``. An answer carries an output as JSON ``data``
or, when asked (``binary_data`` on the output, ``binary_data_output`` on the request), as raw
bytes after the JSON, in the same framing. The classification extension
(``parameters.classification: k`` on an output) answers the top ``k`` classes of each row as
``"score:index:label"`` strings (datatype BYTES), as Triton does.

Everything here checks what a stranger sent and raises :class:`RequestError` (a 4xx) with a
message for the client; nothing in a request reaches a model before it is a finite float32
array of an accepted shape.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.errors import InputError

HEADER_LENGTH = "Inference-Header-Content-Length"
#: OIP datatype -> numpy little-endian dtype of the tensors this server reads or writes
DTYPES = {"FP32": "<f4"}
#: sequence_id as a string: at most this long
MAX_ID_CHARS = 128


class RequestError(InputError):
    """A request the server refuses; ``status`` is the HTTP status of the answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """A tensor: ``name``, OIP ``datatype``, ``shape`` (-1: any size; a repository config's
    leaves the batch dimension out where ``max_batch_size`` > 0)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class WantedOutput:
    """An output the request asks for: as raw bytes or JSON, top ``classification`` classes."""

    name: str
    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class SequenceParams:
    """Triton's sequence parameters: the correlation ``id`` and whether it starts or ends."""

    id: int | str
    start: bool
    end: bool


@dataclass
class InferRequest:
    """A checked request: ``pixels`` float32 ``(N, T, 28)``, finite, of an accepted shape."""

    id: str | None
    pixels: np.ndarray
    outputs: list[WantedOutput]
    sequence: SequenceParams | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding`` gzip or deflate, at most ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)", 415)
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"the {encoding} body does not decompress: {exc}") from None
    if len(data) > limit:
        raise RequestError(f"the request body is over {limit:,} bytes once decompressed", 413)
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON object of a request and the binary tensor data after it (maybe empty)."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
            raise RequestError(
                f"{HEADER_LENGTH} {header_length[:40]!r} is not a length within the "
                f"{len(body):,}-byte body"
            )
        size = int(header_length)
        body, binary = body[:size], body[size:]
    try:
        request = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError("the request JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise RequestError(f"the request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object")
    return request, binary


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise RequestError(f"{what}: shape must be a list of whole numbers >= 0")
    return tuple(value)


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _check_shape(shape: tuple[int, ...], spec: TensorSpec, model: str) -> None:
    fits = len(shape) == len(spec.shape) and all(
        want == -1 or got == want for got, want in zip(shape, spec.shape, strict=True)
    )
    if not fits or 0 in shape:
        raise RequestError(
            f"unexpected shape for input {spec.name!r} of model {model!r}: expected "
            f"{shape_text(spec.shape)} (no dimension 0), got {shape_text(shape)}"
        )


def _json_data(data: Any, count: int, name: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as ``count`` float32 numbers."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, RecursionError):  # ragged nesting
        raise RequestError(f"input {name!r}: data is not a regular list of numbers") from None
    if values.dtype.kind not in "iuf":
        raise RequestError(f"input {name!r}: data must hold numbers only")
    if values.size != count:
        raise RequestError(
            f"input {name!r}: {values.size:,} values in data, the shape needs {count:,}"
        )
    with np.errstate(over="ignore"):
        return values.astype(np.float32).reshape(-1)


def _binary_data(chunk: bytes, datatype: str, count: int, name: str) -> np.ndarray:
    size = count * np.dtype(DTYPES[datatype]).itemsize
    if len(chunk) != size:
        raise RequestError(
            f"input {name!r}: {len(chunk):,} bytes of binary data, the shape needs {size:,}"
        )
    return np.frombuffer(chunk, DTYPES[datatype]).astype(np.float32)


def read_input(
    raw: Any, spec: TensorSpec, model: str, binary: bytes, offset: int
) -> tuple[np.ndarray, int]:
    """One request input against ``spec``: the array and the binary offset after its bytes."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise RequestError("each input must be an object with a name")
    name = raw["name"]
    if name != spec.name:
        raise RequestError(
            f"unexpected inference input {name[:80]!r} for model {model!r} (its input: "
            f"{spec.name!r})"
        )
    shape = _dims(raw.get("shape"), f"input {name!r}")
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise RequestError(
            f"input {name!r}: datatype {str(datatype)[:20]!r}, model {model!r} expects "
            f"{spec.datatype}"
        )
    _check_shape(shape, spec, model)
    count = math.prod(shape)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(f"input {name!r}: binary_data_size must be a whole number >= 0")
        if "data" in raw:
            raise RequestError(f"input {name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise RequestError(
                f"input {name!r}: binary_data_size {size:,} runs past the end of the body"
            )
        values = _binary_data(binary[offset : offset + size], datatype, count, name)
        offset += size
    elif "data" in raw:
        values = _json_data(raw["data"], count, name)
    else:
        raise RequestError(f"input {name!r} has neither data nor binary_data_size")
    if not np.isfinite(values).all():
        raise RequestError(f"input {name!r} holds NaN or infinite values")
    return values.reshape(shape), offset


def _sequence(params: dict[str, Any]) -> SequenceParams | None:
    seq_id = params.get("sequence_id", 0)
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise RequestError("sequence_start and sequence_end must be true or false")
    if isinstance(seq_id, bool) or not isinstance(seq_id, (int, str)):
        raise RequestError("sequence_id must be a whole number or a string")
    if isinstance(seq_id, int) and seq_id < 0:
        raise RequestError("sequence_id must be >= 0")
    if isinstance(seq_id, str) and len(seq_id) > MAX_ID_CHARS:
        raise RequestError(f"sequence_id is longer than {MAX_ID_CHARS} characters")
    if seq_id in (0, ""):
        if start or end:
            raise RequestError("sequence_start or sequence_end needs a sequence_id")
        return None
    return SequenceParams(seq_id, start, end)


def _outputs(raw: Any, spec: TensorSpec, model: str, binary_default: bool) -> list[WantedOutput]:
    if raw is None:
        return [WantedOutput(spec.name, binary_default)]
    if not isinstance(raw, list):
        raise RequestError("outputs must be a list")
    wanted = []
    for out in raw:
        if not isinstance(out, dict) or out.get("name") != spec.name:
            name = out.get("name") if isinstance(out, dict) else out
            raise RequestError(
                f"unexpected inference output {str(name)[:80]!r} for model {model!r} (its "
                f"output: {spec.name!r})"
            )
        params = out.get("parameters") or {}
        binary = params.get("binary_data", binary_default) if isinstance(params, dict) else None
        top = params.get("classification", 0) if isinstance(params, dict) else None
        if not isinstance(binary, bool):
            raise RequestError(f"output {spec.name!r}: binary_data must be true or false")
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise RequestError(f"output {spec.name!r}: classification must be a whole number")
        wanted.append(WantedOutput(spec.name, binary, top))
    return wanted


def parse_infer(
    body: bytes,
    header_length: str | None,
    *,
    model: str,
    input_spec: TensorSpec,
    output_spec: TensorSpec,
    max_batch_size: int,
) -> InferRequest:
    """A request body for ``model`` -> :class:`InferRequest`; RequestError when it does not fit.

    ``max_batch_size`` (0: no limit) bounds the first dimension of the input.
    """
    request, binary = split_body(body, header_length)
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("parameters must be an object")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise RequestError("binary_data_output must be true or false")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise RequestError(f"model {model!r} takes exactly one input, {input_spec.name!r}")
    pixels, used = read_input(inputs[0], input_spec, model, binary, 0)
    if used != len(binary):
        raise RequestError(
            f"{len(binary) - used:,} bytes of binary data after the inputs belong to none"
        )
    if max_batch_size and pixels.shape[0] > max_batch_size:
        raise RequestError(
            f"inference request batch-size must be <= {max_batch_size} for {model!r}, got "
            f"{pixels.shape[0]}"
        )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("id must be a string")
    return InferRequest(
        id=request_id,
        pixels=pixels,
        outputs=_outputs(request.get("outputs"), output_spec, model, binary_default),
        sequence=_sequence(params),
    )


def classify(scores: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Top ``k`` of each row of ``scores`` (N, C) as ``"score:index:label"`` strings (N, k)."""
    if k > scores.shape[1]:
        raise RequestError(f"classification {k} is more than the {scores.shape[1]} classes")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = [
        [f"{row[i]:f}:{i}:{labels[i]}" for i in top] for row, top in zip(scores, order, strict=True)
    ]
    return np.array(rows, dtype=object)


def _bytes_tensor(values: np.ndarray) -> bytes:
    """BYTES elements as Triton sends them: each a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in values.ravel():
        data = str(value).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def encode_infer(
    model: str,
    version: str,
    request: InferRequest,
    logits: np.ndarray,
    labels: list[str],
) -> tuple[bytes, dict[str, str]]:
    """The answer to ``request``: body and headers (binary framing when an output asks for it)."""
    outputs, chunks = [], []
    for want in request.outputs:
        if want.classification:
            values, datatype = classify(logits, want.classification, labels), "BYTES"
        else:
            values, datatype = logits, "FP32"
        out: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": list(values.shape)}
        if want.binary:
            raw = _bytes_tensor(values) if datatype == "BYTES" else values.astype("<f4").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = (
                [str(v) for v in values.ravel()]
                if datatype == "BYTES"
                else (values.ravel().tolist())
            )
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    if request.sequence is not None:
        answer["parameters"] = {"sequence_id": request.sequence.id}
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    headers = {HEADER_LENGTH: str(len(text)), "Content-Type": "application/octet-stream"}
    return text + b"".join(chunks), headers
