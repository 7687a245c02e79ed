"""Whether a column of one file can feed one model input, and the cast that makes it so. No Dagster here.

The one place that decides it: the ``signature`` check (footers only) and scoring (every batch) both
ask ``conversion``, so they cannot disagree. Each file is judged by its own footer's schema, never by
another file's: a partition written by several writers (pandas, Polars, DuckDB) may hold ``float32``
in one file and ``float64`` in the next, and each is cast straight to the type the model declares.
The rules are the README's "Schema rules" table:

- ``same``: nothing to do;
- ``silent``: exact whatever the values (dictionary decoding, large/view types, widening, nulls);
- ``checked``: done value by value; a value that does not fit is an error naming its row
  (integer narrowing, integers into floats that cannot hold them exactly, whole-number floats into
  integers, float64 narrowed to a float32 model but not beyond its range, timestamp units, parsed text);
- ``refused``: decided from the types alone, before any row is read (text into numbers unless
  ``numeric_strings="parse"``, floats into text, time zones, nested values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.resources.core.errors import SchemaMismatchError

NumericStrings = Literal["error", "parse"]
ConversionKind = Literal["same", "silent", "checked", "refused"]
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
# At most this many files are named in one message; the rest are counted.
_FILES_NAMED = 5


@dataclass(frozen=True)
class Conversion:
    """How one column of one file becomes one model input: ``kind`` and, unless ``same``, why."""

    found: pa.DataType
    expected: pa.DataType
    kind: ConversionKind
    why: str = ""


def _base(t: pa.DataType) -> pa.DataType:
    """The type whose values a column holds: dictionary values, and large/view types as their plain form."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    return t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _exact_in_float(t: pa.DataType, target: pa.DataType) -> bool:
    """Every value of integer type ``t`` is exactly a value of float type ``target``."""
    mantissa = {16: 11, 32: 24, 64: 53}[target.bit_width]
    return t.bit_width - (1 if pa.types.is_signed_integer(t) else 0) <= mantissa


def _wider_integer(t: pa.DataType, target: pa.DataType) -> bool:
    """Every value of integer type ``t`` is a value of integer type ``target``."""
    if pa.types.is_signed_integer(t) == pa.types.is_signed_integer(target):
        return t.bit_width <= target.bit_width
    return pa.types.is_unsigned_integer(t) and t.bit_width < target.bit_width


def conversion(found: pa.DataType, expected: pa.DataType, *, numeric_strings: NumericStrings = "error") -> Conversion:
    """The rule for a column of type ``found`` feeding a model input of type ``expected``."""

    def rule(kind: ConversionKind, why: str = "") -> Conversion:
        return Conversion(found, expected, kind, why)

    if found == expected:
        return rule("same")
    base, want = _base(found), _base(expected)
    if pa.types.is_null(base):
        return rule("silent", "every value is null")
    if base == want and not pa.types.is_timestamp(base):
        return rule("silent", "same values in another layout")
    if pa.types.is_nested(base) or pa.types.is_nested(want):
        return rule("refused", "nested values are not cast")
    if _is_text(base) and (_is_number(want) or pa.types.is_boolean(want)):
        if numeric_strings == "parse":
            return rule("checked", "text parsed as numbers; text that is not a number is refused")
        return rule("refused", "text is not parsed as numbers unless numeric_strings='parse'")
    if pa.types.is_integer(want):
        if pa.types.is_integer(base):
            if _wider_integer(base, want):
                return rule("silent", "wider integers")
            return rule("checked", f"every value must fit {want}")
        if pa.types.is_boolean(base):
            return rule("silent", "false/true as 0/1")
        if pa.types.is_floating(base) or pa.types.is_decimal(base):
            return rule("checked", f"whole numbers within the range of {want} only")
    if pa.types.is_floating(want):
        if pa.types.is_integer(base):
            if _exact_in_float(base, want):
                return rule("silent", f"every {base} is exactly a {want}")
            return rule("checked", f"every value must be exactly a {want} (|v| <= 2^{_mantissa(want)})")
        if pa.types.is_floating(base):
            if base.bit_width < want.bit_width:
                return rule("silent", "wider floats")
            return rule("checked", f"rounded to {want}, the model's type; finite values beyond its range are refused")
        if pa.types.is_boolean(base) or pa.types.is_decimal(base):
            return rule("silent", f"as the nearest {want}")
    if pa.types.is_decimal(want) and (_is_number(base) or pa.types.is_boolean(base)):
        return rule("checked", f"every value must fit {want} without rounding")
    if pa.types.is_boolean(want) and pa.types.is_integer(base):
        return rule("checked", "0 and 1 only")
    if pa.types.is_string(want):
        if pa.types.is_integer(base):
            return rule("silent", "integers as their decimal text")
        if pa.types.is_binary(base):
            return rule("checked", "bytes must be valid UTF-8")
        return rule("refused", f"{base} has no single text form")
    if pa.types.is_binary(want) and pa.types.is_string(base):
        return rule("silent", "text as its UTF-8 bytes")
    if pa.types.is_timestamp(want):
        if pa.types.is_timestamp(base):
            if base.tz != want.tz:
                return rule("refused", f"time zone {base.tz or 'none'} is not the model's {want.tz or 'none'}")
            if base.unit == want.unit:
                return rule("silent", "same values in another layout")
            return rule("checked", f"from {base.unit} to {want.unit}: no value may lose precision or overflow")
        if pa.types.is_date(base) and want.tz is None:
            return rule("silent", "dates as midnight")
        return rule("refused", f"{base} is not a point in time")
    if pa.types.is_date(want) and pa.types.is_date(base):
        return rule("silent", "same days in another layout")
    return rule("refused", "no cast between these types")


def _mantissa(t: pa.DataType) -> int:
    return {16: 11, 32: 24, 64: 53}[t.bit_width]


class ValueRefused(SchemaMismatchError):
    """``row`` (0-based, in the column handed to ``cast``) is the first value that cannot be cast.
    The caller knows the file and the chunk, and raises a ``CastError`` that names them."""

    def __init__(self, row: int, detail: str) -> None:
        super().__init__(detail)
        self.row, self.detail = row, detail


def cast(column: pa.Array, rule: Conversion) -> pa.Array:
    """``column`` as ``rule.expected``; raises ``ValueRefused`` at the first value that does not fit.

    Only called for rules that are not ``refused``. Fast path: one cast of the whole column; the
    first offending row is searched only when it fails.
    """
    if rule.kind == "same":
        return column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        out = pc.cast(column, rule.expected, safe=True)
    except _CAST_ERRORS:
        row, detail = _first_failure(column, rule.expected)
        raise ValueRefused(row, detail) from None
    bad = _refused_after_cast(column, out, rule)
    if bad is not None:
        row = pc.index(bad, True).as_py()
        if row >= 0:
            raise ValueRefused(row, _describe_refusal(column, row, rule))
    return out


def _refused_after_cast(column: pa.Array, out: pa.Array, rule: Conversion) -> pa.Array | None:
    """Values Arrow's safe cast lets through but the rules refuse: a finite float that became
    infinite when narrowed, an integer other than 0/1 that became a boolean."""
    found = _base(column.type)
    if pa.types.is_floating(found) and pa.types.is_floating(rule.expected):
        if found.bit_width > rule.expected.bit_width:
            return pc.and_kleene(pc.is_finite(column), pc.invert(pc.is_finite(out)))
        return None
    if pa.types.is_integer(found) and pa.types.is_boolean(rule.expected):
        return pc.invert(pc.is_in(column, value_set=pa.array([0, 1], found)))
    return None


def _describe_refusal(column: pa.Array, row: int, rule: Conversion) -> str:
    value = column[row].as_py()
    if pa.types.is_boolean(rule.expected):
        return f"value {value} is neither 0 nor 1"
    return f"value {value!r} is beyond the range of {rule.expected}"


def _first_failure(column: pa.Array, expected: pa.DataType) -> tuple[int, str]:
    """The first row whose value Arrow refuses to cast, by bisection: about two casts of the column."""
    lo, hi = 0, len(column)  # column[:lo] casts; column[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(column.slice(lo, mid - lo), expected, safe=True)
            lo = mid
        except _CAST_ERRORS:
            hi = mid
    try:
        pc.cast(column.slice(lo, 1), expected, safe=True)
    except _CAST_ERRORS as exc:
        return lo, " ".join(str(exc).split())[:200]
    return lo, "Arrow refused the cast"  # pragma: no cover -- the bisection ends on a failing row


# -- a whole file (or frame) against the model's inputs ---------------------------------------


def refused_columns(schema: pa.Schema, inputs: pa.Schema, *, numeric_strings: NumericStrings) -> list[tuple[str, str]]:
    """The model inputs ``schema`` has in a type that can never become the model's: ``(what, why)``."""
    refused = []
    for f in inputs:
        if f.name in schema.names:
            rule = conversion(schema.field(f.name).type, f.type, numeric_strings=numeric_strings)
            if rule.kind == "refused":
                refused.append((f"{f.name} is {rule.found}, expected {rule.expected}", rule.why))
    return refused


@dataclass(frozen=True)
class SchemaProblems:
    """What the footers of a partition's files (or a frame's schema) say against a model's inputs."""

    missing: dict[pa.Field, list[str | None]]
    """A model input -> the files that lack it (None: a frame)."""
    refused: dict[tuple[str, str], list[str | None]]
    """``(x is X, expected Y, why)`` -> the files where it is so."""
    columns: dict[str | None, list[str]]
    """The columns of each file that lacks a model input."""

    @property
    def missing_names(self) -> set[str]:
        return {f.name for f in self.missing}

    def __bool__(self) -> bool:
        return bool(self.missing or self.refused)

    def describe_missing(self) -> str:
        """``merchant_risk (float) that file part-1.parquet does not have; it has: a, b``."""
        names = ", ".join(f"{f.name} ({f.type})" for f in self.missing)
        files = list(self.columns)
        have = ", ".join(self.columns[files[0]])
        if files == [None]:
            return f"{names} that the data does not have; the data has: {have}"
        lack = "does not have; it has" if len(files) == 1 else f"do not have; {files[0]} has"
        return f"{names} that {_files(files)} {lack}: {have}"

    def describe_refused(self, model: str) -> str:
        """``column x is string, expected double (model ...): why, in file a.parquet`` per problem."""
        parts = []
        for (what, why), files in self.refused.items():
            where = "" if files == [None] else f", in {_files(files)}"
            parts.append(f"column {what} ({model}): {why}{where}")
        return "; ".join(parts)


def schema_problems(
    files: Sequence[tuple[str | None, pa.Schema]], inputs: pa.Schema, *, numeric_strings: NumericStrings
) -> SchemaProblems:
    """Every file's own schema against ``inputs``: the same rules the cast of each batch follows."""
    missing: dict[pa.Field, list[str | None]] = {}
    refused: dict[tuple[str, str], list[str | None]] = {}
    columns: dict[str | None, list[str]] = {}
    for name, schema in files:
        for field in inputs:
            if field.name not in schema.names:
                missing.setdefault(field, []).append(name)
                columns[name] = schema.names
        for problem in refused_columns(schema, inputs, numeric_strings=numeric_strings):
            refused.setdefault(problem, []).append(name)
    return SchemaProblems(missing, refused, columns)


def _files(files: Sequence[str | None]) -> str:
    named = [str(f) for f in files[:_FILES_NAMED]]
    more = f" and {len(files) - _FILES_NAMED} more" if len(files) > _FILES_NAMED else ""
    return f"file{'s' if len(files) > 1 else ''} {', '.join(named)}{more}"


__all__ = [
    "Conversion",
    "NumericStrings",
    "SchemaProblems",
    "ValueRefused",
    "cast",
    "conversion",
    "refused_columns",
    "schema_problems",
]
