"""The pool's choice and what answers say about a credential: pure, with a fake clock and no store."""
from __future__ import annotations

import json

import pytest

from app.services.credentials import CredentialManager
from app.services.credentials.state import CredentialState, reset_time
from app.settings import Settings, SettingsError

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def pool(tmp_path, n=3, switch_at=None):
    paths = []
    for i in range(n):
        path = tmp_path / f"c{i + 1}.json"
        path.write_text(json.dumps({"type": "api_key", "api_key": f"sk-ant-api03-pool-unit-{i + 1:04d}"}))
        paths.append(str(path))
    env = {"DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team.example.com": paths})}
    if switch_at is not None:
        env["POOL_SWITCH_AT_UTILIZATION"] = str(switch_at)
    clock = Clock()
    m = CredentialManager(Settings.from_env(env), clock=clock)
    config = m.domain_config("team.example.com")
    return m, config, config.pool, clock


def unified(util5h, status="allowed", reset=None, util7d=None):
    h = {"anthropic-ratelimit-unified-status": status, "anthropic-ratelimit-unified-5h-utilization": str(util5h)}
    if reset is not None:
        h["anthropic-ratelimit-unified-reset"] = str(int(reset))
        h["anthropic-ratelimit-unified-5h-reset"] = str(int(reset))
    if util7d is not None:
        h["anthropic-ratelimit-unified-7d-utilization"] = str(util7d)
    return h


def chosen(m, config, conversation=None, exclude=()):
    return m.choose(config, {}, conversation, exclude)[1].name


def test_list_order_on_ties_then_lowest_utilisation(tmp_path):
    m, config, p, clock = pool(tmp_path)
    assert chosen(m, config, "c:1") == "c1.json"
    p.learn(p.files[0], unified(0.5), clock.now)
    p.learn(p.files[1], unified(0.2, util7d=0.7), clock.now)  # the 7-day window counts too
    p.learn(p.files[2], unified(0.4), clock.now)
    assert chosen(m, config, "c:2") == "c3.json"


def test_conversations_stick_until_their_credential_cools(tmp_path):
    m, config, p, clock = pool(tmp_path)
    assert chosen(m, config, "s:abc") == "c1.json"
    p.learn(p.files[0], unified(0.9), clock.now)
    assert chosen(m, config, "s:abc") == "c1.json"  # sticky although it is the busiest
    assert chosen(m, config, "s:new") == "c2.json"
    p.judge(p.files[0], 429, clock.now)
    moved = chosen(m, config, "s:abc")
    assert moved in ("c2.json", "c3.json")
    assert chosen(m, config, "s:abc") == moved  # and it sticks to its new home


def test_switch_at_moves_new_conversations_off_a_busy_subscription(tmp_path):
    m, config, p, clock = pool(tmp_path, switch_at=0.95)
    for f, util in zip(p.files, (0.96, 0.97, 0.99)):
        p.learn(f, unified(util), clock.now)
    assert chosen(m, config, "s:x") == "c1.json"  # all above: still the lowest
    p.learn(p.files[1], unified(0.5), clock.now)
    p.learn(p.files[2], unified(0.94), clock.now)
    p.learn(p.files[0], unified(0.951), clock.now)
    assert chosen(m, config, "s:y") == "c2.json"
    p.learn(p.files[1], unified(0.96), clock.now)
    assert chosen(m, config, "s:z") == "c3.json"  # the only one at or below 0.95


def test_cooling_lasts_until_the_reset_and_all_cooling_is_a_429(tmp_path):
    m, config, p, clock = pool(tmp_path)
    p.learn(p.files[0], unified(1.0, "rejected", reset=NOW + 300), clock.now)
    p.judge(p.files[0], 429, clock.now)
    p.learn(p.files[1], {"retry-after": "90"}, clock.now)
    p.judge(p.files[1], 429, clock.now)
    p.learn(p.files[2], {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
                         "anthropic-ratelimit-requests-reset": "2027-01-15T09:00:00Z"}, clock.now)
    p.judge(p.files[2], 429, clock.now)
    states = {f.name: p.states.get(f.name) for f in p.files}
    assert states["c1.json"].cooling_until == NOW + 300
    assert states["c2.json"].cooling_until == NOW + 90
    assert states["c3.json"].cooling_until == reset_time("2027-01-15T09:00:00Z", NOW) == NOW + 3600
    with pytest.raises(Exception) as info:
        m.choose(config, {}, "s:q")
    err = info.value
    assert err.status == 429 and err.error_type == "rate_limit_error" and err.headers["retry-after"] == "90"
    clock.now += 91
    assert chosen(m, config, "s:q") == "c2.json"


def test_rejected_status_cools_even_on_a_successful_answer(tmp_path):
    m, config, p, clock = pool(tmp_path)
    p.learn(p.files[0], unified(1.0, "rejected", reset=NOW + 60), clock.now)
    assert p.states.get("c1.json").phase(p.files[0].fingerprint, clock.now) == "cooling"
    assert chosen(m, config, "s:r") == "c2.json"


def test_broken_until_the_file_holds_another_secret(tmp_path):
    m, config, p, clock = pool(tmp_path, n=2)
    p.broken(p.files[0], "refused with 401 (API key)", clock.now)
    assert chosen(m, config, "s:b") == "c2.json"
    p.broken(p.files[1], "refused with 401 (API key)", clock.now)
    with pytest.raises(Exception) as info:
        m.choose(config, {}, "s:c")
    assert info.value.status == 401 and "c1.json: refused with 401" in info.value.message
    (tmp_path / "c1.json").write_text(json.dumps({"type": "api_key", "api_key": "sk-ant-api03-pool-unit-new-01"}))
    clock.now += 2
    assert chosen(m, config, "s:d") == "c1.json"


def test_headers_are_read_in_every_form():
    st = CredentialState("x")
    st.learn({"anthropic-ratelimit-unified-status": "allowed_warning",
              "anthropic-ratelimit-unified-5h-utilization": "0.82", "anthropic-ratelimit-unified-5h-reset": "1800003600",
              "anthropic-ratelimit-unified-7d-utilization": "0.4", "anthropic-ratelimit-unified-7d-reset": "1800500000",
              "anthropic-ratelimit-unified-representative-claim": "five_hour",
              "anthropic-ratelimit-unified-fallback-percentage": "0.5", "anthropic-ratelimit-unified-reset": "1800003600",
              "anthropic-ratelimit-tokens-limit": "1000", "anthropic-ratelimit-tokens-remaining": "250",
              "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:40Z", "retry-after": "12"}, NOW)
    assert (st.status, st.util_5h, st.reset_5h, st.util_7d, st.claim, st.fallback_pct) == \
        ("allowed_warning", 0.82, 1800003600, 0.4, "five_hour", 0.5)
    assert st.limits["tokens"]["remaining"] == 250 and st.retry_after_until == NOW + 12
    assert st.utilisation() == 0.82
    st.learn({"anthropic-ratelimit-unified-status": "allowed", "anthropic-ratelimit-unified-5h-utilization": "NaN"}, NOW)
    assert st.util_5h is None  # odd numbers are ignored, never an error
    assert reset_time("1800000000000", NOW) == 1800000000  # milliseconds
    assert reset_time("not a time", NOW) is None


def test_settings_accept_a_list_and_name_bad_entries():
    s = Settings.from_env({"DOMAIN_CREDENTIAL_MAPPING": '{"a.com": ["x.json", "y.json"], "b.com": "z.json"}'})
    assert s.domain_credential_mapping == {"a.com": ["x.json", "y.json"], "b.com": "z.json"}
    for bad in ('{"a.com": []}', '{"a.com": ["x.json", 3]}', '{"a.com": [""]}'):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({"DOMAIN_CREDENTIAL_MAPPING": bad})
        assert info.value.variable == "DOMAIN_CREDENTIAL_MAPPING" and "'a.com'" in str(info.value)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"POOL_SWITCH_AT_UTILIZATION": "1.5"})
    assert info.value.variable == "POOL_SWITCH_AT_UTILIZATION"
    for bad, fragment in (('{"name": "x"}', "JSON list"), ('[{"name": "x"}]', "base_url"),
                          ('[{"base_url": "http://a"}, {"name": "upstream-1", "base_url": "http://b"}]', "unique"),
                          ('[{"base_url": "http://a", "model_map": []}]', "model_map")):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({"UPSTREAMS": bad})
        assert info.value.variable == "UPSTREAMS" and fragment in str(info.value)
    with pytest.raises(SettingsError) as info:  # an upstream's model_map follows MODEL_MAP's rules
        Settings.from_env({"UPSTREAMS": '[{"base_url": "http://a", "model_map": {"claude-*": 3}}]'})
    assert "entry 0: model_map" in str(info.value) and "'claude-*'" in str(info.value)
    s = Settings.from_env({"UPSTREAMS": '[{"base_url": "http://a/v1/", "api_key_env": "K", '
                                        '"model_map": {"claude-*": "gpt-4.1"}}]', "K": "the-key"})
    assert s.upstreams[0]["api_key"] == "the-key" and s.upstreams[0]["base_url"] == "http://a/v1"
    assert s.upstreams[0]["model_map"] == {"claude-*": "gpt-4.1"}
    assert "the-key" not in repr(s)


def test_a_newer_answer_elsewhere_does_not_erase_a_cooling():
    from app.services.credentials.state import PoolStates
    from app.storage.sqlite import SqliteStorage

    store = SqliteStorage(":memory:")
    one, two = PoolStates(store, clock=lambda: NOW), PoolStates(store, clock=lambda: NOW + 1)
    st = one.get("c1.json")
    st.learn({"retry-after": "120"}, NOW)
    st.cool(NOW, "rate limited (429)")
    one.settle("c1.json", "fp")
    # the other worker has not pulled yet and learns a newer, ordinary answer, then pushes it
    two.get("c1.json").learn({"anthropic-ratelimit-unified-status": "allowed",
                              "anthropic-ratelimit-unified-5h-utilization": "0.2"}, NOW + 1)
    two.touched("c1.json")
    two.sync_once()
    seen = two.get("c1.json")
    assert seen.cooling_until == NOW + 120 and seen.util_5h == 0.2
    assert seen.phase("fp", NOW + 1) == "cooling"
    one.sync_once()
    assert one.get("c1.json").cooling_until == NOW + 120 and one.get("c1.json").util_5h == 0.2
