"""Top-level fields of many JSON payloads as typed Arrow columns, in bulk.

The contract is one `json.loads` per payload (`payload_value`), then per column
(`fit_value`): a payload that is not a JSON object counts as `{}`; integers → int64 (in
range), numbers → float64, booleans, strings; a string column takes a non-string value as
its JSON text (`json.dumps(sort_keys=True, ensure_ascii=False)`); a value that does not
fit its column is null. `decode_columns` gives exactly those columns, faster:

- Scalars in bulk: the payloads of a batch are parsed at once by pyarrow's JSON reader
  (each wrapped as `{"v": payload}`, one per line, so a payload that is not exactly one
  JSON value fails the parse instead of shifting rows). A column is taken from it only
  where the inferred type says the values are what `json.loads` would give: int64 for an
  int64 column; int64 or double for a float64 column unless a value is an integral double
  of 2**53 or more (pyarrow rounds long integer literals otherwise than Python) or a
  negative zero (`-0` is an integer to Python); string, int64 or bool for a string column.
  Where the inferred type holds nothing that fits, the column is null.
- Everything else per payload: when the bulk parse fails (a payload pyarrow refuses, a
  field of mixed kinds, invalid UTF-8) or a column cannot be taken from it (JSON text of
  objects and arrays, doubles in an integer column), the payloads are parsed one by one
  (orjson, which gives `json.loads`' values for the JSON it accepts, unless an integer
  literal is too long for 64 bits: then `json.loads`) and the column is built from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

INT64_RANGE = (-(2**63), 2**63 - 1)
EXACT_DOUBLE_INTEGERS = 2.0**53  # integral doubles below this came out the same from any literal
_TEXT = json.JSONEncoder(sort_keys=True, ensure_ascii=False)  # json.dumps(sort_keys=True, ensure_ascii=False)
_DIGITS = bytes.maketrans(b"123456789", b"000000000")  # every digit a 0, to find runs of them
_LONG_RUN, _LONG_NEGATIVE, _POINT, _ZERO = b"0" * 20, b"-" + b"0" * 19, ord("."), ord("0")
_SEPARATOR = b'}\n{"v":'
MIN_BLOCK = 1 << 20


def payload_value(payload: bytes) -> Any:
    """`json.loads(payload)`, or None when the payload is not JSON."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


def fit_value(value: Any, kind: pa.DataType) -> Any:
    """`value` as a cell of a `kind` column, or None when it does not fit."""
    if value is None:
        return None
    if kind == pa.bool_():
        return value if isinstance(value, bool) else None
    if kind == pa.int64():
        ok = isinstance(value, int) and not isinstance(value, bool) and INT64_RANGE[0] <= value <= INT64_RANGE[1]
        return value if ok else None
    if kind == pa.float64():
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == pa.string() and isinstance(value, str):
        return value
    return _TEXT.encode(value)


def _objects(payloads: Sequence[bytes], joined: bytes) -> tuple[list[dict[str, Any]], bool]:
    """Each payload's value as `payload_value` gives it, non-objects as {}; and whether
    orjson parsed them all (then no value is NaN, an infinity or a lone surrogate)."""
    values: list[Any] | None = None
    if not _long_integer_literal(joined):
        try:
            values = [orjson.loads(p) for p in payloads]
        except orjson.JSONDecodeError:
            pass  # what orjson refuses json.loads may take (NaN, a BOM): this batch goes by json.loads
    by_orjson = values is not None
    if values is None:
        values = [payload_value(p) for p in payloads]
    return [v if type(v) is dict else {} for v in values], by_orjson


def _long_integer_literal(text: bytes) -> bool:
    """Whether `text` may hold an integer literal beyond 64 bits (orjson reads those as
    floats, json.loads as ints): a run of 20 digits not after a decimal point, or a minus
    and 19 digits. False alarms (a long run inside a string) only cost speed."""
    flat = text.translate(_DIGITS)
    if _LONG_NEGATIVE in flat:
        return True
    at = flat.find(_LONG_RUN)
    while at >= 0:
        if at == 0 or flat[at - 1] != _POINT:
            return True
        end = at + len(_LONG_RUN)
        while end < len(flat) and flat[end] == _ZERO:
            end += 1
        at = flat.find(_LONG_RUN, end)
    return False


def _parse_bulk(payloads: Sequence[bytes], joined: bytes) -> list[pa.Array] | pa.DataType | None:
    """The top-level value of every payload, parsed by pyarrow: the flattened fields of the
    objects (`v`'s children, nulls where a payload was null), the type of `v` when no
    payload was an object, None when pyarrow cannot stand in for json.loads here."""
    if not joined.isascii():
        try:
            joined.decode("utf-8")  # json.loads refuses a payload that is not UTF-8; pyarrow may not
        except UnicodeDecodeError:
            return None
    newlines = joined.count(b"\n") != len(payloads) - 1 or b"\r" in joined
    block = max(MIN_BLOCK, 2 * max(map(len, payloads)) + 64)
    try:
        table = pa_json.read_json(
            pa.py_buffer(b'{"v":' + joined + b"}\n"),
            read_options=pa_json.ReadOptions(block_size=block),
            parse_options=pa_json.ParseOptions(newlines_in_values=newlines),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(payloads) or table.column_names != ["v"]:
        return None
    column = table.column("v").combine_chunks()
    if not pa.types.is_struct(column.type):
        return column.type
    return column


def _from_bulk(objects: pa.StructArray, name: str, kind: pa.DataType) -> pa.Array | None:
    """Column `name` as `kind` from the bulk parse, or None when only json.loads can say."""
    index = objects.type.get_field_index(name)
    if index < 0:
        return pa.nulls(len(objects), kind)
    values = pc.struct_field(objects, [index])  # null where the payload was null
    found = values.type
    if found == kind and kind != pa.float64():
        return values
    if pa.types.is_null(found):
        return pa.nulls(len(objects), kind)
    if kind == pa.float64() and found in (pa.int64(), pa.float64()):
        if found == pa.int64():
            return values.cast(pa.float64(), safe=False)  # rounds to nearest, as float(int) does
        return values if _doubles_as_python_reads_them(values) else None
    if kind == pa.string() and found in (pa.int64(), pa.bool_()):
        return values.cast(pa.string())  # str(int) and "true"/"false", as json.dumps writes them
    if kind == pa.int64() and found == pa.float64():
        return None  # 1 and 1.0 look alike now; to json.loads only the first is an integer
    if kind == pa.string():
        return None  # doubles, objects, arrays, strings read as timestamps: JSON text from Python
    return pa.nulls(len(objects), kind)  # nothing of the inferred type fits the column


def _doubles_as_python_reads_them(values: pa.Array) -> bool:
    """No value whose literal pyarrow may have read otherwise than `float(json.loads(...))`:
    large integral ones (a long integer literal) and negative zeros (`-0`)."""
    large = pc.and_(pc.equal(pc.floor(values), values), pc.greater_equal(pc.abs(values), EXACT_DOUBLE_INTEGERS))
    if pc.any(large).as_py():
        return False
    zeros = pc.filter(values, pc.equal(values, 0.0))
    return not any(math.copysign(1.0, z) < 0 for z in zeros.to_pylist())


def decode_columns(
    payloads: Sequence[bytes], fields: Sequence[tuple[str, pa.DataType]], *, bulk: bool = True
) -> list[pa.Array]:
    """One column per (field name, type) over `payloads` (see the module docstring).
    `bulk=False` skips the bulk parse: for payloads that are parsed one by one anyway
    (fields holding objects or arrays), the per-field work is cheaper than a second parse."""
    if not payloads:
        return [pa.nulls(0, kind) for _, kind in fields]
    joined = _SEPARATOR.join(payloads)
    parsed = _parse_bulk(payloads, joined) if bulk else None
    objects: list[dict[str, Any]] | None = None
    by_orjson = False
    columns = []
    for name, kind in fields:
        column = None
        if isinstance(parsed, pa.StructArray):
            column = _from_bulk(parsed, name, kind)
        elif isinstance(parsed, pa.DataType):  # no payload was an object: every field is missing
            column = pa.nulls(len(payloads), kind)
        if column is None:
            if objects is None:
                objects, by_orjson = _objects(payloads, joined)
            column = pa.array(_fit_all([o.get(name) for o in objects], kind, by_orjson=by_orjson), type=kind)
        columns.append(column)
    return columns


def _fit_all(values: list[Any], kind: pa.DataType, *, by_orjson: bool) -> list[Any]:
    """`[fit_value(v, kind) for v in values]`, a loop per type: decoded JSON holds exactly
    dict, list, str, int, float, bool and None (no subclasses), so `type(v) is` decides.
    JSON text is written in bulk where that gives the same text (`_texts_in_bulk`)."""
    if kind == pa.bool_():
        return [v if type(v) is bool else None for v in values]
    if kind == pa.int64():
        low, high = INT64_RANGE
        return [v if type(v) is int and low <= v <= high else None for v in values]
    if kind == pa.float64():
        return [float(v) if type(v) is float or type(v) is int else None for v in values]
    if kind == pa.string():
        if not by_orjson:
            text = _TEXT.encode
            return [v if type(v) is str or v is None else text(v) for v in values]
        written = iter(_texts_in_bulk([v for v in values if type(v) is not str and v is not None]))
        return [v if type(v) is str or v is None else next(written) for v in values]
    return [fit_value(v, kind) for v in values]


def _texts_in_bulk(values: list[Any]) -> list[bytes | str]:
    """`_TEXT.encode(v)` for each of `values` (UTF-8 bytes where orjson wrote it).

    orjson writes the same JSON as Python but for separators (`,` and `:`, not `, ` and
    `: `) and floats below 1e-4 (`0.00001` and `1e-6`, not `1e-05` and `1e-06`). So orjson
    writes each value, and the spaces are added by replacing every comma and colon, which
    is right where no string holds an escape, comma or colon (then every quote opens or
    closes a string, and every comma and colon outside them is a separator); a text with
    `e-` or `0.0000` in it is written by Python. The strings are checked once for all
    texts (joined by newlines, which orjson never writes raw), text by text only when that
    finds something. `values` come from orjson.loads (no NaN, infinity or lone surrogate,
    whose orjson text differs)."""
    dumps, sort_keys, python = orjson.dumps, orjson.OPT_SORT_KEYS, _TEXT.encode
    try:
        texts = [dumps(v, option=sort_keys) for v in values]
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, nesting too deep
        return [python(v) for v in values]
    joined = b"\n".join(texts)
    if b"\\" in joined or _separator_in_strings(joined):
        return [python(v) if _needs_python(t) else _spaced(t) for v, t in zip(values, texts)]
    spaced = _spaced(joined).split(b"\n")
    if b"e-" not in joined and b"0.0000" not in joined:
        return spaced
    return [python(v) if b"e-" in t or b"0.0000" in t else s for v, t, s in zip(values, texts, spaced)]


def _spaced(text: bytes) -> bytes:
    return text.replace(b",", b", ").replace(b":", b": ")


def _separator_in_strings(text: bytes) -> bool:
    """A comma or colon inside a string of `text` (which holds no escapes)."""
    if b'"' not in text:
        return False
    strings = b"".join(text.split(b'"')[1::2])
    return b"," in strings or b":" in strings


def _needs_python(text: bytes) -> bool:
    """Whether orjson's `text` may not become Python's by adding spaces (see above)."""
    return b"\\" in text or b"e-" in text or b"0.0000" in text or _separator_in_strings(text)


__all__ = ["decode_columns", "fit_value", "payload_value"]
