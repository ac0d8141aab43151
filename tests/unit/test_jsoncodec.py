"""The request path's JSON codec: the same rules with orjson and with the standard library alone."""
import importlib.util
import json
import sys

import pytest

import app.jsoncodec


def _fallback():
    saved = sys.modules.get("orjson")
    sys.modules["orjson"] = None  # import orjson -> ImportError
    try:
        spec = importlib.util.spec_from_file_location("jsoncodec_without_orjson", app.jsoncodec.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("orjson", None)
        else:
            sys.modules["orjson"] = saved
    assert module.orjson is None
    return module


CODECS = [app.jsoncodec, _fallback()]
IDS = ["orjson" if app.jsoncodec.orjson is not None else "stdlib", "stdlib-fallback"]


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("text, needle", [
    (b'{"t": NaN}', "NaN"), (b'{"t": Infinity}', "Infinity"), (b'{"t": -Infinity}', "Infinity"),
    (b'{"t": 1e999}', ""), (b'{"t": "\\ud800"}', ""), (b'{"a": 1', ""), (b"[" * 5000 + b"]" * 5000, "nested"),
])
def test_loads_refuses_what_is_not_json_with_a_reason(codec, text, needle):
    if codec is CODECS[1] and text.startswith(b'{"t": "\\ud800'):
        pytest.skip("the standard library reads lone surrogates; dumps refuses them on the way out")
    with pytest.raises(ValueError) as info:
        codec.loads(text)
    assert needle in str(info.value) and str(info.value)


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_dumps_is_compact_utf8_that_round_trips(codec):
    value = {"t": "héllo ☃ 😀", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    data = codec.dumps(value)
    assert isinstance(data, bytes) and b", " not in data and b'": ' not in data
    assert json.loads(data) == value
    assert list(json.loads(data)) == ["t", "n", "nested"]  # order kept


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_lone_surrogates_are_refused_by_dumps_and_escaped_by_dumps_lenient(codec):
    with pytest.raises(ValueError) as info:
        codec.dumps({"t": "bad \ud800"})
    assert "surrogate" in str(info.value)
    assert json.loads(codec.dumps_lenient({"t": "bad \ud800"})) == {"t": "bad \ud800"}
    assert codec.loads_lenient(b'{"t": "\\ud800"}') == {"t": "\ud800"}
