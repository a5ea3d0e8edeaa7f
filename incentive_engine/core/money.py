"""The one place for money: Decimal construction, currency exponents, half-up rounding, cent splits.

Money is always ``Decimal`` (never float). Amounts are rounded only where the plan says so, to the
currency's minor unit (ISO 4217 exponent), with ROUND_HALF_UP.
"""

from __future__ import annotations

import decimal
import re
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from functools import cache

ZERO = Decimal(0)

# Exact arithmetic for factors: 28 digits is Python's default; we widen it so that products of
# ACVs and factors never lose digits before the single final rounding.
CONTEXT = decimal.Context(prec=60, rounding=ROUND_HALF_UP, traps=[decimal.InvalidOperation, decimal.Overflow])

# ISO 4217 active codes and their minor-unit exponents (2 unless listed otherwise).
_EXPONENT_0 = {
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "ISK",
    "JPY",
    "KMF",
    "KRW",
    "PYG",
    "RWF",
    "UGX",
    "UYI",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
}
_EXPONENT_3 = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
_EXPONENT_4 = {"CLF", "UYW"}
_EXPONENT_2 = {
    "AED",
    "AFN",
    "ALL",
    "AMD",
    "ANG",
    "AOA",
    "ARS",
    "AUD",
    "AWG",
    "AZN",
    "BAM",
    "BBD",
    "BDT",
    "BGN",
    "BMD",
    "BND",
    "BOB",
    "BRL",
    "BSD",
    "BTN",
    "BWP",
    "BYN",
    "BZD",
    "CAD",
    "CDF",
    "CHF",
    "CNY",
    "COP",
    "CRC",
    "CUP",
    "CVE",
    "CZK",
    "DKK",
    "DOP",
    "DZD",
    "EGP",
    "ERN",
    "ETB",
    "EUR",
    "FJD",
    "FKP",
    "GBP",
    "GEL",
    "GHS",
    "GIP",
    "GMD",
    "GTQ",
    "GYD",
    "HKD",
    "HNL",
    "HTG",
    "HUF",
    "IDR",
    "ILS",
    "INR",
    "IRR",
    "JMD",
    "KES",
    "KGS",
    "KHR",
    "KPW",
    "KYD",
    "KZT",
    "LAK",
    "LBP",
    "LKR",
    "LRD",
    "LSL",
    "MAD",
    "MDL",
    "MGA",
    "MKD",
    "MMK",
    "MNT",
    "MOP",
    "MRU",
    "MUR",
    "MVR",
    "MWK",
    "MXN",
    "MYR",
    "MZN",
    "NAD",
    "NGN",
    "NIO",
    "NOK",
    "NPR",
    "NZD",
    "PAB",
    "PEN",
    "PGK",
    "PHP",
    "PKR",
    "PLN",
    "QAR",
    "RON",
    "RSD",
    "RUB",
    "SAR",
    "SBD",
    "SCR",
    "SDG",
    "SEK",
    "SGD",
    "SHP",
    "SLE",
    "SOS",
    "SRD",
    "SSP",
    "STN",
    "SVC",
    "SYP",
    "SZL",
    "THB",
    "TJS",
    "TMT",
    "TOP",
    "TRY",
    "TTD",
    "TWD",
    "TZS",
    "UAH",
    "USD",
    "UZS",
    "VES",
    "WST",
    "XCD",
    "YER",
    "ZAR",
    "ZMW",
    "ZWG",
}
CURRENCY_EXPONENTS: dict[str, int] = {
    **{c: 0 for c in _EXPONENT_0},
    **{c: 2 for c in _EXPONENT_2},
    **{c: 3 for c in _EXPONENT_3},
    **{c: 4 for c in _EXPONENT_4},
}

# Largest absolute amount accepted anywhere (a sanity bound, far above any real contract).
MAX_AMOUNT = Decimal("1e15")


class MoneyError(ValueError):
    """An amount or currency that cannot be money."""


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown ISO 4217 currency code {currency!r}") from None


@cache  # pure; every rounding asks (a close rounds ~100,000 amounts); errors are not kept
def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-exponent(currency))


_PLAIN = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,20})?")  # ASCII digits only


def parse_decimal(value: object) -> Decimal:
    """A finite Decimal from a string or number as written (never through float)."""
    if isinstance(value, bool):
        raise MoneyError("expected a decimal number, got a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        # JSON numbers are parsed as Decimal by our readers; a float here means a caller bug or a
        # value that has already lost precision, so refuse it rather than guess.
        d = Decimal(repr(value))
    elif isinstance(value, str):
        if _PLAIN.fullmatch(value):  # the usual "12345.67": finite, in range, few places by its shape
            return Decimal(value)
        text = value.strip()
        if not text or len(text) > 40:
            raise MoneyError(f"not a decimal number: {value[:40]!r}")
        try:
            d = Decimal(text)
        except decimal.InvalidOperation:
            raise MoneyError(f"not a decimal number: {value!r}") from None
    else:
        raise MoneyError(f"expected a decimal number, got {type(value).__name__}")
    if not d.is_finite():
        raise MoneyError(f"not a finite number: {value!r}")
    if d.adjusted() > 15:
        raise MoneyError(f"number too large: {value!r}")
    if d.as_tuple().exponent < -20:  # type: ignore[operator]
        # '1e-999999999' is twelve characters but a billion digits written out: refuse it
        raise MoneyError(f"number with too many decimal places: {str(value)[:40]!r}")
    return d


def check_amount(amount: Decimal, currency: str) -> Decimal:
    """Reject amounts with more fractional digits than the currency allows."""
    exp = exponent(currency)
    digits = amount.as_tuple().exponent
    if isinstance(digits, int) and digits < -exp:
        raise MoneyError(f"{amount} has more than {exp} decimal digits allowed for {currency}")
    if abs(amount) >= MAX_AMOUNT:
        raise MoneyError(f"{amount} is out of range")
    return amount


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP, context=CONTEXT)


def as_money(amount: Decimal, currency: str) -> Decimal:
    """Quantise an already-exact amount to the currency's minor unit (for display: '0.00')."""
    return round_money(amount, currency)


def format_money(amount: Decimal, currency: str) -> str:
    """Exactly the currency's minor-unit digits, no exponent: '16666.67', '-25000.00', '1500'."""
    q = as_money(amount, currency)
    if q == 0:
        q = abs(q)  # no '-0.00'
    return f"{q:f}"


def split_minor_units(total: Decimal, parts: int, currency: str) -> tuple[Decimal, ...]:
    """Split ``total`` into ``parts`` amounts in minor units that sum to it exactly.

    floor(total / parts) each, the remaining units one each to the earliest parts:
    16,666.66 / 4 -> 4,166.67, 4,166.67, 4,166.66, 4,166.66.
    """
    if parts <= 0:
        raise ValueError("parts must be positive")
    unit = minor_unit(currency)
    units = int((total / unit).to_integral_value(rounding=ROUND_FLOOR))
    if Decimal(units) * unit != total:
        raise MoneyError(f"{total} is not a whole number of {currency} minor units")
    sign = -1 if units < 0 else 1
    q, r = divmod(abs(units), parts)
    return tuple(Decimal(sign * (q + (1 if i < r else 0))) * unit for i in range(parts))


def format_factor(value: Decimal) -> str:
    """A factor as a plain decimal with at least one fractional digit: '1.25', '1.0', '0.8'."""
    text = f"{value.normalize(CONTEXT):f}"
    if "." not in text:
        text += ".0"
    return text


def config_decimal(value: object) -> Decimal:
    """A number from a plan file: YAML ints, floats (via str(), never binary) and strings; booleans and
    non-finite values are refused."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int | float):
        d = Decimal(str(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except ArithmeticError:
            raise ValueError(f"not a number: {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d
