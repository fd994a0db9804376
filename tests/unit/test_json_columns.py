"""decode_columns against its contract, one json.loads per payload (payload_value +
fit_value, the per-row code the topics product used before it decoded in bulk): the
bulk paths (pyarrow's parse, orjson, JSON text written in bulk) must give the same cells."""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pytest

from storage_core.products.json_columns import _long_integer_literal, decode_columns, fit_value, payload_value

FIELDS = [("a", pa.int64()), ("b", pa.float64()), ("c", pa.string()), ("d", pa.bool_()), ("e", pa.string()),
          ("missing", pa.int64())]
CLEAN = [b'{"a": 1, "b": 2.5, "c": "x", "d": true, "e": {"k": [1, 2.5, "s"]}}', b'{"a": 2, "b": 3, "c": "y", "d": false}']
TRICKY = [
    b'{"a": 123456789012345678901234}', b'{"b": 123456789012345678901234}', b'{"c": 12345678901234567890123}',
    b'{"e": {"n": 12345678901234567890123}}', b'{"e": [-98765432109876543210]}',
    b'{"a": -0}', b'{"b": -0}', b'{"b": -0.0}', b'{"c": -0.0}', b'{"a": 1.0}', b'{"a": 1e2}', b'{"b": 1e2}',
    b'{"b": 9007199254740993}', b'{"b": 18446744073709551615}', b'{"a": 9223372036854775808}',
    b'{"a": -9223372036854775808}', b'{"b": 0.1}', b'{"b": 1e-320}', b'{"b": 1e400}',
    b'{"b": NaN}', b'{"b": Infinity}', b'{"c": -Infinity}', b'{"e": [NaN, 1]}', b'{"e": {"x": Infinity}}',
    b'{"c": "2020-01-01"}', b'{"c": "2020-01-01T00:00:00"}', b'{"c": 5}', b'{"c": true}', b'{"c": 0.1}',
    b'{"c": 1e-05}', b'{"c": 1.5e-7}', b'{"c": 1e16}', b'{"c": null}', b'{"c": [1, "a,b"]}',
    b'{"c": {"z": 1, "a": "\\u00e9"}}', b'{"c": "line\\nbreak"}', b'{"c": "\\u00e9\\ud83d\\ude00"}',
    b'{"d": 1}', b'{"d": "true"}', b'{"d": null}', b'{"a": 1, "a": 2}', b'{"a": "1"}', b'{"a": true}',
    b'5', b'[1]', b'null', b'"s"', b'', b' ', b'not json', b'{"a": 1} {"a": 2}', b'\xef\xbb\xbf{"a": 3}',
    b'{"c": "\xff"}', b'{"c": "tab\there"}', b'{"a":\n 7}', b'{"a": 8}\r\n', b'{"a": 9,}', b'{"a": 01}',
    b'{"e": {"b": 1, "a": [1.0, 0.0001, 1e-4, 123456789.125, 1e22, -0.0, true, null, "x", 0.00001, 3e-9]}}',
    b'{"e": {"a:b": 1}}', b'{"e": {"q": "say \\"hi\\""}}', b'{"e": {"q": "a, b"}}', b'{"e": ["slash\\\\"]}',
    b'{"e": {"\\u00e9": 1, "z": 2, "a": 3}}', b'{"e": {"t": "pre-e-fix", "v": 10.00001}}', b'{"e": []}',
    b'{"e": {}}', b'{"e": "text"}', b'{"e": 7}', b'{"e": 2.5}', b'{"e": false}', b'{"e": [[1, [2, {"k": null}]]]}',
    b'{"missing": 1, "b": 1.7976931348623157e308}', b'{"b": -1e-7}', b'{"b": 4.9e-324}',
]


def reference(payloads: list[bytes], fields: list[tuple[str, pa.DataType]]) -> list[list]:
    objects = [v if isinstance(v, dict) else {} for v in map(payload_value, payloads)]
    return [[fit_value(o.get(name), kind) for o in objects] for name, kind in fields]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def check(payloads: list[bytes], fields=FIELDS, *, bulk: bool = True) -> None:
    expected = reference(payloads, fields)
    got = [column.to_pylist() for column in decode_columns(payloads, fields, bulk=bulk)]
    for (name, _), want, have in zip(fields, expected, got):
        assert len(want) == len(have), name
        for row, (x, y) in enumerate(zip(want, have)):
            assert same(x, y), (name, payloads[row], x, y)


@pytest.mark.parametrize("payload", TRICKY, ids=lambda p: repr(p)[:40])
@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-row"])
def test_each_tricky_payload_among_clean_ones_decodes_as_json_loads_would(payload: bytes, bulk: bool) -> None:
    check([CLEAN[0], payload, CLEAN[1]], bulk=bulk)
    check([payload], bulk=bulk)
    check([payload, payload], bulk=bulk)


def test_a_batch_of_all_the_tricky_payloads_decodes_as_json_loads_would() -> None:
    check(CLEAN + TRICKY)
    check(CLEAN + TRICKY, bulk=False)


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-(2**70), 2**70) if rng.random() < 0.05 else rng.randint(-1000, 10**12)
    if kind in (1, 2):
        return rng.gauss(0, 1) * 10 ** rng.uniform(-12, 20)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return "".join(rng.choice("ab é,:-e0\"\\\n") for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return {f"k{rng.randrange(5)}": _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("seed", range(6))
def test_random_payloads_decode_as_json_loads_would(seed: int) -> None:
    rng = random.Random(seed)
    fields = [(f"k{i}", kind) for i, kind in enumerate([pa.int64(), pa.float64(), pa.string(), pa.bool_(), pa.string()])]
    # one kind per field in most batches (the bulk paths), anything in some
    for mixed in (False, True):
        payloads = []
        for _ in range(300):
            row = {}
            for i, (name, kind) in enumerate(fields):
                value = _random_value(rng)
                if not mixed and rng.random() < 0.9:
                    value = {pa.int64(): rng.randint(-10**15, 10**15), pa.float64(): rng.gauss(0, 1e3),
                             pa.bool_(): rng.random() < 0.5}.get(kind, value)
                row[name] = value
            payloads.append(json.dumps(row, ensure_ascii=rng.random() < 0.5).encode())
        check(payloads, fields)
        check(payloads, fields, bulk=False)


def test_long_integer_literals_are_found_but_long_fractions_are_not() -> None:
    assert _long_integer_literal(b'{"a": 123456789012345678901}')
    assert _long_integer_literal(b'[-1234567890123456789]')
    assert not _long_integer_literal(b'{"t": 1700000000000000000, "x": 0.00012345678901234567}')
    assert not _long_integer_literal(b'[0.000000000000000000001, 9999999999999999999]')


def test_json_text_in_bulk_is_python_text_or_nothing() -> None:
    import orjson

    from storage_core.products.json_columns import _texts_in_bulk

    rng = random.Random(7)
    typical = [orjson.loads(json.dumps({"header": {"stamp": {"sec": i, "nanosec": i * 7}, "frame_id": "base_link"},
                                        "w": [rng.gauss(0, 10 ** rng.uniform(-4, 15)) for _ in range(4)], "ok": True,
                                        "é": None, "n": -(2**63)})) for i in range(500)]
    def python(v) -> str:
        return json.dumps(v, sort_keys=True, ensure_ascii=False)

    texts = _texts_in_bulk(typical)
    assert [t if isinstance(t, str) else t.decode() for t in texts] == [python(v) for v in typical]
    assert sum(isinstance(t, bytes) for t in texts) > 400  # most through orjson, some (tiny floats) by Python
    values = [orjson.loads(json.dumps(_random_value(rng), allow_nan=False)) for _ in range(3000)]  # as orjson.loads gives them
    texts = _texts_in_bulk(values)
    assert [t if isinstance(t, str) else t.decode() for t in texts] == [python(v) for v in values]
    clean = [v for v in values if "," not in python(v).replace(", ", "") and "e-" not in python(v)]
    assert [t if isinstance(t, str) else t.decode() for t in _texts_in_bulk(clean)] == [python(v) for v in clean]
