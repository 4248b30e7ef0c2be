"""One recipe for every ONNX file derived from the fp32 graph (int8, fp16): transform, audit,
write under a temporary name, accuracy guard, the measured figures recorded in the file's
metadata, rename. A failed step leaves no file behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export import parity
from lstm_export.devices import Device
from lstm_export.errors import ConfigError, ExportError, ModelLoadError, ValidationError, first_line
from lstm_export.export.audit import OnnxAudit, audit_onnx
from lstm_export.export.metadata import set_onnx_metadata
from lstm_export.export.quiet import ProgressFn, quiet_exporters, status
from lstm_export.export.validate import load_test_set
from lstm_export.fileio import atomic_path, check_writable_file, file_digest

log = logging.getLogger(__name__)

#: transform(fp32 ModelProto, its audit) -> derived ModelProto
Transform = Callable[[Any, OnnxAudit], Any]


@dataclass(kw_only=True)
class DerivedReport:
    """What every derived file's report holds; accuracies are in 0..1."""

    path: Path
    source: Path
    audit: OnnxAudit
    file_size: int
    source_size: int
    max_accuracy_drop: float
    evaluate_seconds: float


def derive_onnx(
    onnx_path: Path,
    out: Path | None,
    *,
    tag: str,
    precision: str,
    transform: Transform,
    extra_metadata: dict[str, str] | None = None,
    validate: bool = True,
    data_dir: Path | None = None,
    max_accuracy_drop: float,
    device: Device | str = Device.cpu,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], parity.Parity | None, str | None, float]:
    """Derive ``<stem>.<tag>.onnx`` (or ``out``) from ``onnx_path`` with ``transform``:
    ``(the DerivedReport fields, guard, provider, transform seconds)``, guard and provider None
    when not validated. With ``validate`` the top-1 accuracy of the derived file on the MNIST test
    set, run on ``device``, must stay within ``max_accuracy_drop`` (0.003 = 0.3 points) of the
    fp32 file's, else ValidationError and no file.
    """
    import onnx

    source = Path(onnx_path)
    if not source.is_file():
        raise ModelLoadError(f"ONNX file {source} not found")
    if not 0 <= max_accuracy_drop < 1:
        raise ConfigError(f"max accuracy drop must be in [0, 1), got {max_accuracy_drop}")
    device = Device(device)
    default = source.with_name(f"{source.stem}.{tag}{source.suffix or '.onnx'}")
    target = check_writable_file(Path(out) if out is not None else default)
    data = load_test_set(data_dir, purpose=f"the {tag} accuracy guard") if validate else None
    t0 = time.perf_counter()
    try:
        original = onnx.load(str(source))
    except Exception as exc:
        raise ModelLoadError(f"{source} is not a readable ONNX file: {first_line(exc)}") from exc
    src_audit = audit_onnx(original)
    status(progress, f"converting to {tag}")
    try:
        with quiet_exporters():
            model = transform(original, src_audit)
    except (ExportError, ValidationError):
        raise
    except Exception as exc:
        raise ExportError(f"{tag} conversion of {source} failed: {first_line(exc)}") from exc
    audit, meta = audit_onnx(model), dict(src_audit.metadata)
    meta.update(
        precision=precision, source_onnx_sha256=file_digest(source), **(extra_metadata or {})
    )
    transform_seconds = time.perf_counter() - t0

    guard = provider = None
    t1 = time.perf_counter()
    with atomic_path(target) as tmp:
        set_onnx_metadata(model, meta)
        onnx.save_model(model, str(tmp))
        meta["validated_on"] = "not validated"
        if data is not None:
            guard, provider = accuracy_guard(
                source, tmp, *data, tag=tag, max_drop=max_accuracy_drop, device=device
            )
            assert guard.accuracy is not None and guard.reference_accuracy is not None
            meta.update(
                test_accuracy=f"{guard.accuracy:.6g}",
                test_examples=str(guard.images),
                fp32_test_accuracy=f"{guard.reference_accuracy:.6g}",
                validated_on=provider,
            )
        else:
            log.warning("validation skipped: %s is unchecked", target)
        set_onnx_metadata(model, meta)  # the measured figures go into the file itself
        onnx.save_model(model, str(tmp))
    size = target.stat().st_size
    audit.metadata, audit.file_size = dict(meta), size
    report = {
        "path": target,
        "source": source,
        "audit": audit,
        "file_size": size,
        "source_size": source.stat().st_size,
        "max_accuracy_drop": max_accuracy_drop,
        "evaluate_seconds": time.perf_counter() - t1,
    }
    return report, guard, provider, transform_seconds


def accuracy_guard(
    fp32: Path,
    derived: Path,
    images: Any,
    labels: Any,
    *,
    tag: str,
    max_drop: float,
    device: Device | str = Device.cpu,
) -> tuple[parity.Parity, str]:
    """Both files through the ONNX Runtime runner on ``images`` (N, 28, 28) with ``labels``
    (N,): the derived file's parity against fp32 and the provider that ran it.

    ValidationError when its accuracy falls more than ``max_drop`` below fp32's.
    """
    from lstm_export.infer.registry import make_runner

    with make_runner(fp32, "onnxruntime", Device.cpu) as reference:
        fp32_logits = reference.infer_all(images)
    with make_runner(derived, "onnxruntime", device) as runner:
        provider = str(getattr(runner, "providers", [runner.device])[0])
        logits = runner.infer_all(images)
    result = parity.compare(logits, fp32_logits, labels)
    if parity.problems(result, max_accuracy_drop=max_drop):
        assert result.accuracy is not None and result.reference_accuracy is not None
        raise ValidationError(
            f"{tag} accuracy {result.accuracy * 100:.2f} % is "
            f"{(result.reference_accuracy - result.accuracy) * 100:.2f} points below fp32 "
            f"{result.reference_accuracy * 100:.2f} % on {result.images} test images ({provider}; "
            f"allowed: {max_drop * 100:.2f}); no {tag} file written"
        )
    log.info("%s: fp32 %.4f, %s %.4f", tag, result.reference_accuracy, tag, result.accuracy)
    return result, provider
