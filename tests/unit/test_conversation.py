import json

from app.conversation import conversation_key, session_id

FIXTURE = "tests/fixtures/claude-code-2.1.197/messages-turn1.json"


def test_session_id_from_claude_code_json_user_id():
    body = json.load(open(FIXTURE))
    assert session_id(body) == "f52da381-2caf-4b5c-aead-7dbea19f7434"
    assert conversation_key(body) == "s:f52da381-2caf-4b5c-aead-7dbea19f7434"


def test_session_id_from_legacy_string_form():
    uid = "user_" + "ab" * 32 + "_account_1234abcd-0000-0000-0000-000000000000_session_9f8e7d6c-1111-2222-3333-444455556666"
    assert session_id({"metadata": {"user_id": uid}}) == "9f8e7d6c-1111-2222-3333-444455556666"


def test_odd_values_give_none():
    for body in (None, 5, {"metadata": 5}, {"metadata": {"user_id": 7}}, {"metadata": {"user_id": "{bad"}},
                 {"metadata": {"user_id": "[1]"}}, {"metadata": {"user_id": "plain"}}):
        assert session_id(body) is None


def test_fallback_key_is_stable_per_client_and_first_message():
    a = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}
    later = {"messages": a["messages"] + [{"role": "user", "content": [{"type": "text", "text": "more"}]}]}
    assert conversation_key(a, "k1") == conversation_key(later, "k1")
    assert conversation_key(a, "k1") != conversation_key(a, "k2")
    assert conversation_key({"messages": []}) is None
