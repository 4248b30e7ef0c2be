"""How one backend's logits compare with another's: the one comparison every stage uses, each
caller with its own thresholds (:func:`problems`). Logits are float ``(N, C)``; labels int ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstm_export.errors import ValidationError


@dataclass(frozen=True)
class Parity:
    """A candidate's logits against a reference's on the same ``images`` inputs."""

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    #: fraction of argmax equal to the reference's, in [0, 1]
    agreement: float
    #: how many argmax differ from the reference's
    disagreements: int
    #: index of the first input whose argmax differs, None when all agree
    first_disagreement: int | None
    #: whether every candidate logit is finite
    finite: bool
    #: top-1 accuracy of the candidate and of the reference in [0, 1] (None without labels)
    accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def accuracy_delta(self) -> float | None:
        """Candidate accuracy minus reference accuracy (negative: the candidate is worse)."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.accuracy - self.reference_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_delta": self.accuracy_delta}


def compare(
    candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None
) -> Parity:
    """Compare ``candidate`` logits with ``reference`` logits (and both with ``labels``)."""
    if candidate.shape != reference.shape or candidate.ndim != 2:
        raise ValidationError(
            f"logits of shape {tuple(candidate.shape)} cannot be compared with "
            f"{tuple(reference.shape)}"
        )
    if labels is not None and labels.shape != (candidate.shape[0],):
        raise ValidationError(
            f"labels of shape {tuple(labels.shape)} do not fit logits {tuple(candidate.shape)}"
        )
    if candidate.shape[0] == 0:
        raise ValidationError("no logits to compare")
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    got, ref = candidate.argmax(axis=1), reference.argmax(axis=1)
    differs = np.flatnonzero(got != ref)
    return Parity(
        images=int(candidate.shape[0]),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        agreement=float((got == ref).mean()),
        disagreements=int(differs.size),
        first_disagreement=int(differs[0]) if differs.size else None,
        finite=bool(np.all(np.isfinite(candidate))),
        accuracy=None if labels is None else float((got == labels).mean()),
        reference_accuracy=None if labels is None else float((ref == labels).mean()),
    )


def problems(
    parity: Parity,
    *,
    tolerance: float | None = None,
    min_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
) -> list[str]:
    """What in ``parity`` breaks the given thresholds (each None: not checked), as phrases."""
    found = []
    if not parity.finite:
        found.append("non-finite logits")
    if tolerance is not None and not parity.max_abs_diff <= tolerance:
        found.append(f"max |logit diff| {parity.max_abs_diff:.3g} > tolerance {tolerance:.3g}")
    if min_agreement is not None and parity.agreement < min_agreement:
        found.append(
            f"argmax differs on {parity.disagreements} of {parity.images} images "
            f"(agreement {parity.agreement * 100:.2f} %)"
        )
    delta = parity.accuracy_delta
    if max_accuracy_drop is not None and delta is not None and -delta > max_accuracy_drop + 1e-12:
        assert parity.accuracy is not None and parity.reference_accuracy is not None
        found.append(
            f"accuracy {parity.accuracy * 100:.2f} % is {-delta * 100:.2f} points below "
            f"{parity.reference_accuracy * 100:.2f} % (allowed: {max_accuracy_drop * 100:.2f})"
        )
    return found


def max_abs_diff(got: Sequence[Any], want: Sequence[Any]) -> float:
    """Largest absolute difference between the arrays of ``got`` and those of ``want``, pair by
    pair; ``inf`` where a pair's shapes differ."""
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)))
    return worst
