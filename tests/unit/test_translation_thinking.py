"""The proxy's thinking signature and the Anthropic thinking controls -> reasoning_effort mapping."""
import base64

import pytest

from app.translation import thinking
from app.translation.thinking import (is_proxy_signature, reasoning_effort, sign, sign_thinking_text, verify,
                                      verify_thinking_text)

KEY = b"k" * 32
OTHER = b"o" * 32
# The start of a real Anthropic thinking signature (tests/fixtures traffic has this shape: plain base64).
ANTHROPIC_SIG = "EqQBCkgIARABGAIiQL2ZVl8oG3Q7w1ZcWmV0Ym9mY2F0Y2hlcnNhbmRtb3JldGV4dGhlcmUrLz0=" * 4


@pytest.mark.parametrize("payload", ["", "chat:abc", "resp:rs_123|gAAAAABo+/==", "ünïcode ✓", "a.b.c", "x" * 50_000])
def test_sign_then_verify_gives_the_payload_back(payload):
    sig = sign(payload, KEY)
    assert sig.startswith("nxp1.")
    assert is_proxy_signature(sig)
    assert verify(sig, KEY) == payload


def test_signature_is_not_anthropic_shaped():
    sig = sign("chat:x", KEY)
    # Anthropic's signatures are standard base64; ours carry '.' separators, which base64 never has.
    assert "." in sig
    with pytest.raises(ValueError):
        base64.b64decode(sig, validate=True)


def test_verify_refuses_other_keys_and_tampering():
    sig = sign("resp:rs_1", KEY)
    assert verify(sig, OTHER) is None
    prefix, payload, mac = sig.split(".")
    forged_payload = base64.urlsafe_b64encode(b"resp:rs_2").rstrip(b"=").decode()
    assert verify(f"{prefix}.{forged_payload}.{mac}", KEY) is None
    assert verify(sig[:-2] + ("AA" if not sig.endswith("AA") else "BB"), KEY) is None
    assert verify(sig + ".x", KEY) is None


@pytest.mark.parametrize("value", [ANTHROPIC_SIG, "", None, 5, "nxp1.", "nxp1..", "nxp1.@@@.@@@", "nxp1.é.é",
                                   "nxp1." + "A" * (thinking.MAX_SIGNATURE_CHARS + 1)])
def test_verify_returns_none_for_anything_not_ours(value):
    assert verify(value, KEY) is None


def test_anthropic_signature_is_not_taken_for_ours():
    assert not is_proxy_signature(ANTHROPIC_SIG)


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        sign("x", b"")
    assert verify(sign("x", KEY), b"") is None


def test_thinking_text_signature_binds_the_text():
    sig = sign_thinking_text("I should call the tool.", KEY)
    assert verify_thinking_text("I should call the tool.", sig, KEY)
    assert not verify_thinking_text("I should call another tool.", sig, KEY)
    assert not verify_thinking_text("I should call the tool.", sig, OTHER)
    assert not verify_thinking_text("I should call the tool.", ANTHROPIC_SIG, KEY)


@pytest.mark.parametrize("body, expected", [
    ({"output_config": {"effort": "low"}, "thinking": {"type": "adaptive"}}, "low"),
    ({"output_config": {"effort": "medium"}}, "medium"),
    ({"output_config": {"effort": "high"}}, "high"),
    ({"output_config": {"effort": "xhigh"}}, "high"),
    ({"output_config": {"effort": "max"}}, "high"),
    ({"output_config": {"effort": "HIGH"}}, "high"),
    # effort wins over a budget
    ({"output_config": {"effort": "low"}, "thinking": {"type": "enabled", "budget_tokens": 31999}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 4000}}, "low"),  # Claude Code "think"
    ({"thinking": {"type": "enabled", "budget_tokens": 8191}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8192}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 10000}}, "medium"),  # "think hard"
    ({"thinking": {"type": "enabled", "budget_tokens": 24575}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 24576}}, "high"),
    ({"thinking": {"type": "enabled", "budget_tokens": 31999}}, "high"),  # "ultrathink"
    ({"thinking": {"type": "adaptive"}}, None),
    ({"thinking": {"type": "disabled", "budget_tokens": 31999}}, None),
    ({"thinking": {"type": "enabled", "budget_tokens": True}}, None),
    ({"thinking": {"type": "enabled", "budget_tokens": 2.5e4}}, None),
    ({"thinking": {"type": "enabled", "budget_tokens": -1}}, None),
    ({"thinking": {"type": "enabled"}}, None),
    ({"output_config": {"effort": "enormous"}}, None),
    ({"output_config": {"effort": 3}}, None),
    ({"output_config": "high"}, None),
    ({}, None),
])
def test_reasoning_effort(body, expected):
    assert reasoning_effort(body) == expected


def test_reasoning_effort_of_non_dict():
    assert reasoning_effort(None) is None
    assert reasoning_effort([]) is None


def test_without_proxy_thinking_leaves_out_only_the_proxys_blocks():
    from app.translation.thinking import without_proxy_thinking

    ours = {"type": "thinking", "thinking": "t", "signature": "nxp1.cGF5.bWFj"}
    theirs = {"type": "thinking", "thinking": "c", "signature": "EqQBCkYIBRgC"}
    redacted = {"type": "redacted_thinking", "data": "nxp1.looks-like-ours-but-is-data"}
    body = {"model": "m", "max_tokens": 9, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "nxp1. in text is just text"}]},
        {"role": "assistant", "content": [ours, theirs, redacted, {"type": "text", "text": "a"}]},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": [ours]},
        {"role": "user", "content": "c"}]}
    before = repr(body)
    out = without_proxy_thinking(body)
    assert out == {"model": "m", "max_tokens": 9, "messages": [
        body["messages"][0],
        {"role": "assistant", "content": [theirs, redacted, {"type": "text", "text": "a"}]},
        body["messages"][2], body["messages"][4]]}
    assert repr(body) == before  # the parsed body is not changed in place
    # nothing of ours: nothing to change, and odd shapes are no error
    for nothing in [{"messages": [{"role": "assistant", "content": [theirs]}]}, {"messages": "x"}, [], None,
                    {"messages": [None, {"content": [None, 3, {"type": "thinking", "signature": 7}]}]}]:
        assert without_proxy_thinking(nothing) is None
