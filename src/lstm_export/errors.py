"""Typed errors raised by the library. The CLI turns each into one line and exit code 1."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (its type name if it has none), cut to
    ``limit`` characters: how a third-party exception is quoted inside one of ours."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class LstmExportError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(LstmExportError):
    """MNIST files are missing, corrupt, or could not be fetched."""


class CheckpointError(LstmExportError):
    """A checkpoint is missing, truncated, or not one of ours."""


class ConfigError(LstmExportError):
    """A configuration value (flag, preset, option) is invalid."""


class OutputError(LstmExportError):
    """An output path cannot be written."""


class ExportError(LstmExportError):
    """Exporting a model to TorchScript or ONNX failed."""


class ValidationError(LstmExportError):
    """An exported graph does not give eager PyTorch's answers."""


class ModelLoadError(LstmExportError):
    """An exported model file cannot be loaded or is not understood."""


class DeviceError(LstmExportError):
    """The requested device or execution provider is not usable here."""


class InferenceError(LstmExportError):
    """A loaded model failed while running on an input."""


class InputError(LstmExportError):
    """Input data (images, folders, arrays) is not usable."""


class BenchError(LstmExportError):
    """A benchmark cannot be run as asked."""
