"""Weights: fixed, AHP (against published worked examples), entropy (hand-computed), combined."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incentive_engine.core.weights import (
    AhpConsistencyError,
    ahp,
    ahp_weights,
    combine,
    entropy_divergence,
    entropy_weights,
    fixed_weights,
    parse_ratio,
    reciprocal_matrix,
)


def r3(value: D) -> D:
    return value.quantize(D("0.001"))


# --- AHP -----------------------------------------------------------------------------------------

# The classic three-criteria matrix (A is moderately more important than B, strongly more than C; B
# moderately more than C), used in Saaty's introductions and most AHP tutorials. Published results:
# priorities 0.637, 0.258, 0.105; lambda_max 3.039; CI 0.019; CR 0.033 (RI(3) = 0.58).
CLASSIC_3 = [[1, 3, 5], ["1/3", 1, 3], ["1/5", "1/3", 1]]

# Saaty, T. L. (1990) "How to make a decision: The Analytic Hierarchy Process", European Journal of
# Operational Research 48, 9-26: the "buying a house" example, eight criteria (size, transportation,
# neighbourhood, age, yard, modern facilities, general condition, financing). Published: priorities
# 0.173, 0.054, 0.188, 0.018, 0.031, 0.036, 0.167, 0.333; lambda_max 9.669; CI 0.238; CR 0.169 -
# above 0.10, so our plans must reject it.
SAATY_HOUSE = [
    [1, 5, 3, 7, 6, 6, "1/3", "1/4"],
    ["1/5", 1, "1/3", 5, 3, 3, "1/5", "1/7"],
    ["1/3", 3, 1, 6, 3, 4, 6, "1/5"],
    ["1/7", "1/5", "1/6", 1, "1/3", "1/4", "1/7", "1/8"],
    ["1/6", "1/3", "1/3", 3, 1, "1/2", "1/5", "1/6"],
    ["1/6", "1/3", "1/4", 4, 2, 1, "1/5", "1/6"],
    [3, 5, "1/6", 7, 5, 5, 1, "1/2"],
    [4, 7, 5, 8, 6, 6, 2, 1],
]


def test_ahp_classic_3x3_matches_published_values() -> None:
    result = ahp(CLASSIC_3)
    assert [r3(w) for w in result.weights] == [D("0.637"), D("0.258"), D("0.105")]
    assert r3(result.lambda_max) == D("3.039")
    assert r3(result.ci) == D("0.019")
    assert r3(result.cr) == D("0.033")
    assert ahp_weights(CLASSIC_3) == result.weights
    # It really is the eigenvector: A w = lambda_max w (to the 10 places we keep).
    m = reciprocal_matrix(CLASSIC_3)
    for i in range(3):
        aw = sum(m[i][j] * result.weights[j] for j in range(3))
        assert abs(aw - result.lambda_max * result.weights[i]) < D("1e-8")


def test_ahp_saaty_house_published_values_and_rejected() -> None:
    result = ahp(SAATY_HOUSE)
    assert [r3(w) for w in result.weights] == [
        D(x) for x in ("0.173", "0.054", "0.188", "0.018", "0.031", "0.036", "0.167", "0.333")
    ]
    assert r3(result.lambda_max) == D("9.669")
    assert r3(result.ci) == D("0.238")
    assert r3(result.cr) == D("0.169")
    with pytest.raises(AhpConsistencyError, match=r"AHP consistency ratio 0\.169 >= 0\.10"):
        ahp_weights(SAATY_HOUSE)


def test_ahp_cyclic_judgements_rejected_with_cr_in_message() -> None:
    # A > B > C > A, each "very strong": hopelessly inconsistent.
    with pytest.raises(ValueError, match=r"AHP consistency ratio \d+\.\d{3} >= 0\.10"):
        ahp_weights([[1, 7, "1/7"], ["1/7", 1, 7], [7, "1/7", 1]])


def test_ahp_consistent_matrix_gives_exact_ratios_and_cr_zero() -> None:
    # w = (4, 2, 1)/7 -> a_ij = w_i / w_j
    result = ahp([[1, 2, 4], ["1/2", 1, 2], ["1/4", "1/2", 1]])
    assert result.weights == (D("0.5714285714"), D("0.2857142857"), D("0.1428571429"))
    assert result.lambda_max == D("3.0000000000")
    assert result.cr == 0


def test_ahp_small_matrices() -> None:
    assert ahp([[1]]).weights == (D(1),)
    two = ahp([[1, 3], ["1/3", 1]])
    assert two.weights == (D("0.75"), D("0.25"))
    assert two.cr == 0


def test_ahp_accepts_rounded_reciprocals_and_uses_exact_ones() -> None:
    assert ahp([[1, 3, 5], [0.333, 1, 3], [0.2, 0.333, 1]]).weights == ahp(CLASSIC_3).weights


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1, 2], [D("0.4"), 1]], "not reciprocal"),
        ([[1, 2, 3], ["1/2", 1]], "square"),
        ([[2, 2], ["1/2", 1]], "diagonal"),
        ([[1, -2], ["-1/2", 1]], "positive"),
        ([], "empty"),
        ([[1] * 11 for _ in range(11)], "at most 10"),
        ([[1, "x"], ["1/2", 1]], "not a number"),
        ([[1, True], [1, 1]], "boolean"),
    ],
)
def test_ahp_matrix_validation(matrix: list[list[object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ahp(matrix)


def test_parse_ratio() -> None:
    assert parse_ratio("1/4") == D("0.25")
    assert parse_ratio(0.5) == D("0.5")
    assert parse_ratio(3) == D(3)
    with pytest.raises(ValueError):
        parse_ratio("1/0")


# --- entropy -------------------------------------------------------------------------------------


def test_entropy_hand_computed_with_constant_kpi() -> None:
    # Three reps, three KPIs: A (higher is better), B (lower is better), C constant.
    #   A: 1, 2, 3    -> min-max 0, 0.5, 1          -> p = 0, 1/3, 2/3
    #      sum p ln p = (1/3) ln(1/3) + (2/3) ln(2/3) = -0.366204 - 0.270310 = -0.636514
    #      e_A = 0.636514 / ln 3 (1.098612) = 0.579380 ; d_A = 0.420620
    #   B: 10, 20, 40 -> (40 - x)/30 = 1, 2/3, 0     -> p = 0.6, 0.4, 0
    #      sum p ln p = 0.6 ln 0.6 + 0.4 ln 0.4 = -0.306495 - 0.366516 = -0.673012
    #      e_B = 0.673012 / 1.098612 = 0.612602 ; d_B = 0.387398
    #   C: 5, 5, 5    -> constant, no information   -> d_C = 0
    #   w = d / (0.420620 + 0.387398 = 0.808018) = 0.520557, 0.479443, 0
    values = [[D(1), D(10), D(5)], [D(2), D(20), D(5)], [D(3), D(40), D(5)]]
    w = entropy_weights(values, ["higher", "lower", "higher"])
    assert [x.quantize(D("0.000001")) for x in w] == [D("0.520557"), D("0.479443"), D("0.000000")]
    assert w[2] == 0


def test_entropy_all_constant_falls_back_to_equal() -> None:
    w = entropy_weights([[D(1), D(2)], [D(1), D(2)]], ["higher", "lower"])
    assert w == (D("0.5"), D("0.5"))


def test_entropy_excludes_missing_values_per_column() -> None:
    # Column A has values for only one rep -> no information; column B decides alone.
    w = entropy_weights([[D(1), D(1)], [None, D(2)], [None, D(3)]], ["higher", "higher"])
    assert w == (D(0), D(1))
    assert entropy_divergence([None, None], "higher") == 0


def test_entropy_two_reps_full_information() -> None:
    # Two distinct values normalise to 0 and 1: p = (0, 1), e = 0, d = 1.
    assert entropy_divergence([D(3), D(7)], "lower") == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-50, 50), min_size=3, max_size=3), min_size=2, max_size=6), st.randoms())
def test_entropy_order_of_reps_irrelevant_and_weights_sum_to_one(rows: list[list[int]], rnd: object) -> None:
    values = [[D(x) for x in row] for row in rows]
    directions = ["higher", "lower", "higher"]
    w = entropy_weights(values, directions)
    shuffled = list(values)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert entropy_weights(shuffled, directions) == w
    assert all(x >= 0 for x in w)
    assert abs(sum(w) - 1) <= D("1e-9")


# --- fixed, combined -----------------------------------------------------------------------------


def test_fixed_weights_normalised() -> None:
    assert fixed_weights([D(2), D(1), D(1)]) == (D("0.5"), D("0.25"), D("0.25"))
    with pytest.raises(ValueError):
        fixed_weights([D(0), D(0)])
    with pytest.raises(ValueError):
        fixed_weights([D(-1), D(2)])


def test_combine_by_share() -> None:
    fixed = (D("0.5"), D("0.5"), D(0))
    other = (D(0), D("0.25"), D("0.75"))
    assert combine([(fixed, D("0.5")), (other, D("0.5"))]) == (D("0.25"), D("0.375"), D("0.375"))
    # shares need not sum to 1, vectors are normalised first
    assert combine([((D(2), D(2)), D(3)), ((D(1), D(0)), D(1))]) == (D("0.625"), D("0.375"))
    with pytest.raises(ValueError):
        combine([(fixed, D(0))])
