"""KPI weights: fixed, AHP (analytic hierarchy process), entropy weight method, and combinations.

Everything here is pure and deterministic: Decimal arithmetic in a fixed 50-digit context, fixed
stopping rules, and final weights rounded half-up to ``WEIGHT_PLACES`` (10) decimal places, so the same
inputs give the same weights on every machine (no floats, no numpy).

AHP
    The weights are the principal (Perron) eigenvector of the positive reciprocal pairwise matrix,
    normalised to sum 1. It is found by power iteration with repeated squaring (Saaty's method: the
    normalised row sums of ``A^(2^k)`` converge to the principal eigenvector): at most ``_MAX_SQUARINGS``
    squarings, stopping when no component moves by more than 1e-40. Then
    ``lambda_max = mean_i((A w)_i / w_i)``, ``CI = (lambda_max - n) / (n - 1)``, ``CR = CI / RI(n)``
    with Saaty's random indices (n = 1..10: 0, 0, 0.58, 0.90, 1.12, 1.24, 1.32, 1.41, 1.45, 1.49;
    n <= 2 -> CR 0). A matrix with CR >= 0.10 is rejected (``AhpConsistencyError``, a ValueError whose
    message names the CR). Only the upper triangle is read as judgements; the lower triangle must hold
    their reciprocals (within 1%, so ``0.333`` for ``1/3`` is fine) and the exact reciprocals are used.
    More than 10 criteria are rejected (no published random index).

Entropy weight method
    Input: one row per rep (alternative), one column per KPI, ``None`` where the rep has no value.
    For each KPI j, only the m_j reps with a value take part:
      1. min-max normalise respecting the direction: x' = (x - min)/(max - min) for "higher",
         (max - x)/(max - min) for "lower" (no shift is added: the worst rep gets 0);
      2. p_ij = x'_ij / sum_i x'_ij;
      3. e_j = -1/ln(m_j) * sum_i p_ij ln p_ij   (0 ln 0 = 0);
      4. d_j = 1 - e_j;  w_j = d_j / sum_k d_k.
    A KPI with no information gets d_j = 0 (weight 0): constant across reps (max = min), or fewer than
    two reps with a value. If every d_j is 0, the weights fall back to equal weights. Each column is
    sorted before summing, so the result does not depend on the order of the reps.

Combined
    The weighted mean of the methods' weight vectors (each normalised to sum 1) by their ``share``
    (shares >= 0, normalised by their sum).
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

# A fixed working context: results never depend on the caller's decimal context.
_CTX = decimal.Context(
    prec=50, rounding=ROUND_HALF_UP, traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow]
)
WEIGHT_PLACES = 10
_Q = Decimal(1).scaleb(-WEIGHT_PLACES)
_CONVERGED = Decimal("1e-40")
_MAX_SQUARINGS = 64
_RECIPROCAL_TOLERANCE = Decimal("0.01")

# Saaty's random consistency indices by matrix size.
RANDOM_INDEX: dict[int, Decimal] = {
    1: Decimal("0"),
    2: Decimal("0"),
    3: Decimal("0.58"),
    4: Decimal("0.90"),
    5: Decimal("1.12"),
    6: Decimal("1.24"),
    7: Decimal("1.32"),
    8: Decimal("1.41"),
    9: Decimal("1.45"),
    10: Decimal("1.49"),
}
CR_LIMIT = Decimal("0.10")


class AhpConsistencyError(ValueError):
    """A pairwise matrix whose consistency ratio is 0.10 or more: the plan is rejected."""

    def __init__(self, cr: Decimal) -> None:
        self.cr = cr
        super().__init__(f"AHP consistency ratio {format_ratio(cr)} >= 0.10 (revise the pairwise judgements)")


@dataclass(frozen=True)
class AhpResult:
    weights: tuple[Decimal, ...]
    lambda_max: Decimal
    ci: Decimal
    cr: Decimal


def format_ratio(value: Decimal) -> str:
    """Three decimals, half-up: '0.142'."""
    return f"{value.quantize(Decimal('0.001'), rounding=ROUND_HALF_UP, context=_CTX):f}"


def parse_ratio(value: object) -> Decimal:
    """A positive judgement from YAML: int, float (via str), Decimal, '3', '0.25' or '1/3'."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int | float):
        d = Decimal(str(value))
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = (Decimal(part.strip()) for part in text.split("/", 1))
                d = _CTX.divide(num, den)
            else:
                d = Decimal(text)
        except (decimal.InvalidOperation, decimal.DivisionByZero, ValueError):
            raise ValueError(f"not a number or ratio: {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d


def reciprocal_matrix(rows: Sequence[Sequence[object]]) -> tuple[tuple[Decimal, ...], ...]:
    """Validate a pairwise matrix and return it with exact reciprocals below the diagonal.

    Square, every entry positive, diagonal exactly 1, a_ji = 1/a_ij within 1% (a_ij * a_ji in [0.99, 1.01]).
    """
    n = len(rows)
    if n == 0:
        raise ValueError("AHP matrix is empty")
    if n > max(RANDOM_INDEX):
        raise ValueError(f"AHP supports at most {max(RANDOM_INDEX)} criteria (no random index for {n})")
    m = [[parse_ratio(v) for v in row] for row in rows]
    for i, row in enumerate(m):
        if len(row) != n:
            raise ValueError(f"AHP matrix must be square: row {i + 1} has {len(row)} entries, expected {n}")
        for j, v in enumerate(row):
            if v <= 0:
                raise ValueError(f"AHP matrix entry [{i + 1}][{j + 1}] must be positive, got {v}")
        if row[i] != 1:
            raise ValueError(f"AHP matrix diagonal entry [{i + 1}][{i + 1}] must be 1, got {row[i]}")
    out = [[Decimal(1)] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            product = _CTX.multiply(m[i][j], m[j][i])
            if abs(product - 1) > _RECIPROCAL_TOLERANCE:
                raise ValueError(f"AHP matrix is not reciprocal: [{j + 1}][{i + 1}] = {m[j][i]} should be 1/{m[i][j]}")
            out[i][j] = m[i][j]
            out[j][i] = _CTX.divide(Decimal(1), m[i][j])
    return tuple(tuple(r) for r in out)


def _normalise(vector: Sequence[Decimal]) -> list[Decimal]:
    total = _sum(vector)
    return [_CTX.divide(v, total) for v in vector]


def _sum(values: Sequence[Decimal]) -> Decimal:
    total = Decimal(0)
    for v in values:
        total = _CTX.add(total, v)
    return total


def _matmul(a: list[list[Decimal]], b: list[list[Decimal]]) -> list[list[Decimal]]:
    n = len(a)
    return [[_sum([_CTX.multiply(a[i][k], b[k][j]) for k in range(n)]) for j in range(n)] for i in range(n)]


@lru_cache(maxsize=64)
def _ahp_cached(matrix: tuple[tuple[Decimal, ...], ...]) -> AhpResult:
    n = len(matrix)
    a = [list(r) for r in matrix]
    power = [list(r) for r in matrix]
    w = _normalise([_sum(r) for r in power])
    for _ in range(_MAX_SQUARINGS):
        power = _matmul(power, power)
        scale = _sum([_sum(r) for r in power])
        power = [[_CTX.divide(v, scale) for v in r] for r in power]
        nxt = _normalise([_sum(r) for r in power])
        moved = max(abs(x - y) for x, y in zip(nxt, w, strict=True))
        w = nxt
        if moved <= _CONVERGED:
            break
    aw = [_sum([_CTX.multiply(a[i][j], w[j]) for j in range(n)]) for i in range(n)]
    lam = _CTX.divide(_sum([_CTX.divide(aw[i], w[i]) for i in range(n)]), Decimal(n))
    if n <= 2:
        ci = cr = Decimal(0)
    else:
        ci = _CTX.divide(lam - n, Decimal(n - 1))
        cr = _CTX.divide(ci, RANDOM_INDEX[n])
    weights = _round_weights(w)
    return AhpResult(weights, _q(lam), _q(ci), _q(max(cr, Decimal(0))))


def ahp(rows: Sequence[Sequence[object]]) -> AhpResult:
    """Principal eigenvector, lambda_max, CI and CR of a pairwise matrix (no consistency check)."""
    return _ahp_cached(reciprocal_matrix(rows))


def ahp_weights(rows: Sequence[Sequence[object]]) -> tuple[Decimal, ...]:
    """AHP weights; raises ``AhpConsistencyError`` when CR >= 0.10."""
    result = ahp(rows)
    check_consistency(result)
    return result.weights


def check_consistency(result: AhpResult) -> None:
    if result.cr >= CR_LIMIT:
        raise AhpConsistencyError(result.cr)


def fixed_weights(weights: Sequence[Decimal]) -> tuple[Decimal, ...]:
    """The plan's weights normalised to sum 1 (weights >= 0, sum > 0)."""
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    total = _sum(list(weights))
    if total <= 0:
        raise ValueError("weights must sum to more than 0")
    return _round_weights([_CTX.divide(w, total) for w in weights])


def entropy_weights(values: Sequence[Sequence[Decimal | None]], directions: Sequence[str]) -> tuple[Decimal, ...]:
    """Entropy weights over ``values[rep][kpi]`` (``None`` = the rep lacks that KPI); see the module doc."""
    n = len(directions)
    for row in values:
        if len(row) != n:
            raise ValueError(f"every row needs {n} values, got {len(row)}")
    d = [entropy_divergence([row[j] for row in values], directions[j]) for j in range(n)]
    total = _sum(d)
    if total == 0:
        return _round_weights([_CTX.divide(Decimal(1), Decimal(n))] * n) if n else ()
    return _round_weights([_CTX.divide(x, total) for x in d])


def entropy_divergence(column: Sequence[Decimal | None], direction: str) -> Decimal:
    """d_j = 1 - e_j for one KPI column (0 for a constant column or fewer than two values)."""
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    xs = sorted(Decimal(x) for x in column if x is not None)
    m = len(xs)
    if m < 2 or xs[0] == xs[-1]:
        return Decimal(0)
    lo, hi = xs[0], xs[-1]
    span = hi - lo
    norm = [_CTX.divide(x - lo if direction == "higher" else hi - x, span) for x in xs]
    norm.sort()
    total = _sum(norm)
    plnp = []
    for x in norm:
        if x == 0:
            continue
        p = _CTX.divide(x, total)
        plnp.append(_CTX.multiply(p, p.ln(_CTX)))
    plnp.sort()
    e = _CTX.divide(-_sum(plnp), Decimal(m).ln(_CTX))
    return max(Decimal(0), 1 - e)


def combine(parts: Sequence[tuple[Sequence[Decimal], Decimal]]) -> tuple[Decimal, ...]:
    """Weighted mean of weight vectors by share: parts = [(weights, share), ...]."""
    if not parts:
        raise ValueError("nothing to combine")
    n = len(parts[0][0])
    shares = [Decimal(s) for _, s in parts]
    if any(s < 0 for s in shares) or _sum(shares) <= 0:
        raise ValueError("shares must be >= 0 and sum to more than 0")
    total_share = _sum(shares)
    acc = [Decimal(0)] * n
    for (vector, _), share in zip(parts, shares, strict=True):
        if len(vector) != n:
            raise ValueError("weight vectors differ in length")
        vsum = _sum(list(vector))
        if vsum <= 0:
            continue
        for j, w in enumerate(vector):
            acc[j] = _CTX.add(acc[j], _CTX.divide(_CTX.multiply(w, share), _CTX.multiply(vsum, total_share)))
    return _round_weights(acc)


def _q(value: Decimal) -> Decimal:
    return value.quantize(_Q, rounding=ROUND_HALF_UP, context=_CTX)


def _round_weights(vector: Sequence[Decimal]) -> tuple[Decimal, ...]:
    return tuple(_q(w) for w in vector)
