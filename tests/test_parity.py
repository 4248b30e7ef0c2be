"""The one comparison module: known arrays in, known figures and failures out."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_export import parity
from lstm_export.errors import ValidationError

REFERENCE = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
CANDIDATE = np.array([[2.0, 1.5], [0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])
LABELS = np.array([0, 1, 1, 0])


def test_compare_on_known_arrays() -> None:
    got = parity.compare(CANDIDATE, REFERENCE, LABELS)
    assert got.images == 4
    assert got.agreement == pytest.approx(0.75) and got.disagreements == 1  # row 2 flips
    assert got.first_disagreement == 2
    assert got.accuracy == pytest.approx(0.75)  # predictions 0, 1, 1, 1 against 0, 1, 1, 0
    assert got.reference_accuracy == pytest.approx(0.5)  # predictions 0, 1, 0, 1
    assert got.accuracy_delta == pytest.approx(0.25)
    assert got.max_abs_diff == pytest.approx(3.0)
    assert got.mean_abs_diff == pytest.approx((0.5 + 3.0 + 3.0) / 8)
    assert got.finite
    assert got.to_dict()["accuracy_delta"] == pytest.approx(0.25)


def test_compare_without_labels_has_no_accuracy() -> None:
    got = parity.compare(REFERENCE, REFERENCE)
    assert got.accuracy is None and got.accuracy_delta is None
    assert got.max_abs_diff == 0 and got.agreement == 1 and got.first_disagreement is None


@pytest.mark.parametrize(
    ("candidate", "reference", "labels", "match"),
    [
        (CANDIDATE[:3], REFERENCE, None, "cannot be compared"),
        (CANDIDATE, REFERENCE, LABELS[:3], "labels of shape"),
        (CANDIDATE[:0], REFERENCE[:0], None, "no logits"),
    ],
)
def test_compare_refuses_mismatched_inputs(
    candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        parity.compare(candidate, reference, labels)


def test_thresholds_are_the_callers() -> None:
    got = parity.compare(CANDIDATE, REFERENCE, LABELS)
    assert parity.problems(got) == []  # nothing asked, nothing checked
    assert parity.problems(got, tolerance=3.0) == []
    assert parity.problems(got, tolerance=2.9) == ["max |logit diff| 3 > tolerance 2.9"]
    assert parity.problems(got, min_agreement=1.0) == [
        "argmax differs on 1 of 4 images (agreement 75.00 %)"
    ]
    worse = parity.compare(REFERENCE, CANDIDATE, LABELS)  # accuracy 50 % against 75 %
    assert parity.problems(worse, max_accuracy_drop=0.25) == []
    assert parity.problems(worse, max_accuracy_drop=0.2) == [
        "accuracy 50.00 % is 25.00 points below 75.00 % (allowed: 20.00)"
    ]


def test_non_finite_logits_are_a_problem_whatever_is_asked() -> None:
    bad = CANDIDATE.copy()
    bad[0, 0] = np.nan
    got = parity.compare(bad, REFERENCE)
    assert not got.finite
    assert parity.problems(got) == ["non-finite logits"]
    assert parity.problems(got, min_agreement=1.0)[0] == "non-finite logits"
