"""Credential files and the per-request credential choice (passthrough mode)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import pytest

from app.errors import ProxyError
from app.services.credentials import files as cmod
from app.services.credentials import OAUTH_BETA, Credential, CredentialManager, host_without_port, merge_beta
from app.settings import Settings

TEAM1_KEY = "sk-ant-api03-team1-" + "Q7w" * 20 + "zT1x"
TEAM2_KEY = "sk-ant-api03-team2-" + "Rk4" * 20 + "yU2w"
CLIENT_KEY = "sk-ant-api03-client-" + "Pp9" * 20 + "vV3u"
CLIENT_OAT = "sk-ant-oat01-client-" + "Ls2" * 20 + "tW4t"
ENV_KEY = "sk-ant-api03-env-" + "Mm5" * 20 + "sX5s"
PROXY_ENV_KEY = "sk-ant-api03-proxyenv-" + "Nn6" * 20 + "rY6r"
ACCESS = "sk-ant-oat01-access-" + "Jj7" * 20 + "qZ7q"
REFRESH = "sk-ant-ort01-refresh-" + "Hh8" * 20 + "pA8p"
ALL_SECRETS = (TEAM1_KEY, TEAM2_KEY, CLIENT_KEY, CLIENT_OAT, ENV_KEY, PROXY_ENV_KEY, ACCESS, REFRESH)


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def settings(**kw) -> Settings:
    return dataclasses.replace(Settings.from_env({}), **kw)


def write(path, data, mode=0o600) -> str:
    path = str(path)
    with open(path, "w") as fh:
        fh.write(data if isinstance(data, str) else json.dumps(data))
    os.chmod(path, mode)
    return path


def api_key_file(path, key, **extra):
    return write(path, {"type": "api_key", "api_key": key, **extra})


def oauth_file(path, expires_ms, **extra):
    return write(path, {"type": "oauth", "oauth": {"accessToken": ACCESS, "refreshToken": REFRESH,
                                                   "expiresAt": expires_ms, "scopes": ["user:inference"],
                                                   "isMax": False}, **extra})


def assert_no_secret(text: str) -> None:
    for s in ALL_SECRETS:
        assert s not in text
        assert s[-6:] not in text  # not even the tail of one


@pytest.fixture
def two_teams(tmp_path):
    t1 = api_key_file(tmp_path / "team1.json", TEAM1_KEY)
    t2 = api_key_file(tmp_path / "team2.json", TEAM2_KEY)
    return {"team1.example.com": t1, "team2.example.com": t2}


# ---------------------------------------------------------------- host_without_port / headers


@pytest.mark.parametrize("raw, expected", [
    ("Example.COM:443", "example.com"),
    ("example.com", "example.com"),
    ("[::1]:3000", "::1"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("127.0.0.1:8080", "127.0.0.1"),
    ("example.com.", "example.com"),
    ("", ""),
    (None, ""),
])
def test_host_without_port(raw, expected):
    assert host_without_port(raw) == expected


@pytest.mark.parametrize("client, expected", [
    (None, OAUTH_BETA),
    ("", OAUTH_BETA),
    ("prompt-caching-2024-07-31", "prompt-caching-2024-07-31," + OAUTH_BETA),
    ("a, b", "a,b," + OAUTH_BETA),
    (OAUTH_BETA + ", a", OAUTH_BETA + ",a"),
    ("a, a ,," + OAUTH_BETA + "," + OAUTH_BETA, "a," + OAUTH_BETA),
])
def test_merge_beta_keeps_client_order_without_duplicates(client, expected):
    assert merge_beta(client) == expected


def test_apply_api_key_sets_x_api_key_and_drops_authorization():
    headers = {"authorization": "Bearer something", "anthropic-beta": "a"}
    Credential("api_key", TEAM1_KEY, "domain", "team1.example.com").apply(headers)
    assert headers == {"x-api-key": TEAM1_KEY, "anthropic-beta": "a"}


def test_apply_oauth_sets_bearer_drops_x_api_key_and_merges_beta():
    headers = {"x-api-key": "whatever", "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"}
    Credential("oauth", ACCESS, "domain", "team2.example.com").apply(headers)
    assert headers == {"authorization": "Bearer " + ACCESS,
                       "anthropic-beta": "fine-grained-tool-streaming-2025-05-14," + OAUTH_BETA}


def test_credential_repr_and_masked_hide_the_secret():
    cred = Credential("api_key", TEAM1_KEY, "domain", "team1.example.com")
    assert_no_secret(repr(cred))
    assert_no_secret(cred.masked)
    assert cred.masked.startswith("sk-ant-api03-")


# ---------------------------------------------------------------- the choice order


def test_domain_mapping_wins_over_client_headers(two_teams):
    m = CredentialManager(settings(domain_credential_mapping=two_teams, claude_api_key=ENV_KEY))
    cred = m.resolve("team1.example.com", {"x-api-key": CLIENT_KEY, "authorization": "Bearer " + CLIENT_OAT})
    assert (cred.kind, cred.secret, cred.source, cred.domain) == ("api_key", TEAM1_KEY, "domain", "team1.example.com")
    assert m.resolve("team2.example.com", {}).secret == TEAM2_KEY


def test_host_with_port_and_upper_case_matches_mapping(two_teams):
    mapping = {"Team1.Example.com:8443": two_teams["team1.example.com"]}
    m = CredentialManager(settings(domain_credential_mapping=mapping))
    for host in ("TEAM1.example.COM:3000", "team1.example.com", "team1.example.com:443"):
        cred = m.resolve(host, {})
        assert cred.secret == TEAM1_KEY and cred.domain == "team1.example.com"


def test_client_x_api_key_is_second():
    m = CredentialManager(settings(claude_api_key=ENV_KEY))
    cred = m.resolve("any.example.com", {"x-api-key": CLIENT_KEY})
    assert (cred.kind, cred.secret, cred.source, cred.domain) == ("api_key", CLIENT_KEY, "client", None)


def test_client_bearer_api_key_becomes_api_key():
    m = CredentialManager(settings(claude_api_key=ENV_KEY))
    cred = m.resolve("any.example.com", {"authorization": "Bearer " + CLIENT_KEY})
    assert (cred.kind, cred.secret, cred.source) == ("api_key", CLIENT_KEY, "client")
    headers = {"authorization": "Bearer " + CLIENT_KEY}
    cred.apply(headers)
    assert headers == {"x-api-key": CLIENT_KEY}


def test_client_bearer_oauth_token_stays_bearer_with_beta():
    m = CredentialManager(settings(claude_api_key=ENV_KEY))
    cred = m.resolve("any.example.com", {"authorization": "bearer " + CLIENT_OAT})
    assert (cred.kind, cred.secret, cred.source) == ("oauth", CLIENT_OAT, "client")
    headers = {"authorization": "Bearer " + CLIENT_OAT}
    cred.apply(headers)
    assert headers == {"authorization": "Bearer " + CLIENT_OAT, "anthropic-beta": OAUTH_BETA}


def test_x_api_key_is_preferred_over_authorization():
    m = CredentialManager(settings())
    cred = m.resolve("h", {"x-api-key": CLIENT_KEY, "authorization": "Bearer " + CLIENT_OAT})
    assert cred.secret == CLIENT_KEY


def test_non_bearer_authorization_is_not_a_credential():
    m = CredentialManager(settings(claude_api_key=ENV_KEY))
    assert m.resolve("h", {"authorization": "Basic dXNlcjpwYXNz"}).source == "env"


def test_env_keys_in_order():
    both = CredentialManager(settings(claude_api_key=ENV_KEY, claude_code_proxy_api_key=PROXY_ENV_KEY))
    cred = both.resolve("h", {})
    assert (cred.kind, cred.secret, cred.source) == ("api_key", ENV_KEY, "env")
    only_proxy = CredentialManager(settings(claude_code_proxy_api_key=PROXY_ENV_KEY))
    assert only_proxy.resolve("h", {}).secret == PROXY_ENV_KEY


def test_nothing_available_is_401():
    m = CredentialManager(settings())
    with pytest.raises(ProxyError) as exc:
        m.resolve("h", {})
    assert exc.value.status == 401
    assert exc.value.error_type == "authentication_error"
    assert exc.value.message.startswith("No credential available")


# ---------------------------------------------------------------- unmapped hosts


def test_unmapped_host_lenient_uses_first_valid_and_warns_once(tmp_path, two_teams, caplog):
    mapping = {"broken.example.com": str(tmp_path / "missing.json"), **two_teams}
    m = CredentialManager(settings(domain_credential_mapping=mapping, claude_api_key=ENV_KEY))
    caplog.set_level(logging.DEBUG, logger="app.services.credentials")
    for _ in range(50):
        cred = m.resolve("other.example.com:3000", {})
        assert (cred.secret, cred.source, cred.domain) == (TEAM1_KEY, "domain", "team1.example.com")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "No credential mapping found for host 'other.example.com'" in r.getMessage()]
    assert len(warnings) == 1
    assert "team1.example.com" in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG and "team1.example.com" in r.getMessage() for r in caplog.records)
    m.resolve("third.example.com", {})
    assert sum("No credential mapping found for host" in r.getMessage() for r in caplog.records) == 2
    assert_no_secret(caplog.text)


def test_unmapped_host_with_its_own_credential_uses_it(two_teams):
    m = CredentialManager(settings(domain_credential_mapping=two_teams))
    cred = m.resolve("other.example.com", {"x-api-key": CLIENT_KEY})
    assert (cred.secret, cred.source) == (CLIENT_KEY, "client")


def test_unmapped_host_strict_is_401_without_client_credential(two_teams):
    m = CredentialManager(settings(domain_credential_mapping=two_teams, strict_domain_mapping=True,
                                   claude_api_key=ENV_KEY))
    with pytest.raises(ProxyError) as exc:
        m.resolve("other.example.com", {})
    assert exc.value.status == 401 and exc.value.error_type == "authentication_error"
    assert "other.example.com" in exc.value.message
    # a client bringing its own key lends nothing of ours: allowed
    assert m.resolve("other.example.com", {"x-api-key": CLIENT_KEY}).secret == CLIENT_KEY
    assert m.resolve("team2.example.com", {}).secret == TEAM2_KEY


def test_lenient_fallback_skips_files_protected_by_client_api_key(tmp_path):
    protected = api_key_file(tmp_path / "p.json", TEAM1_KEY, client_api_key="proxy-key-for-team1-abcdef")
    open_ = api_key_file(tmp_path / "o.json", TEAM2_KEY)
    m = CredentialManager(settings(domain_credential_mapping={"p.example.com": protected, "o.example.com": open_}))
    assert m.resolve("stranger.example.com", {}).domain == "o.example.com"


def test_unmapped_host_lenient_without_valid_files_uses_env(tmp_path):
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": str(tmp_path / "nope.json")},
                                   claude_api_key=ENV_KEY))
    assert m.resolve("b.example.com", {}).source == "env"


def test_mapped_host_with_unusable_file_is_401_not_another_credential(tmp_path):
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": str(tmp_path / "nope.json")},
                                   claude_api_key=ENV_KEY))
    with pytest.raises(ProxyError) as exc:
        m.resolve("a.example.com", {"x-api-key": CLIENT_KEY})
    assert exc.value.status == 401 and "a.example.com" in exc.value.message and "not found" in exc.value.message


# ---------------------------------------------------------------- files, validation, status


def test_formats_paths_and_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("credentials")
    api_key_file("credentials/team1.json", TEAM1_KEY)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    expires = int(time.time() * 1000) + 3_600_000
    oauth_file(home / "team2.json", expires)
    mapping = {"team1.example.com": "credentials/team1.json", "team2.example.com": "~/team2.json"}
    m = CredentialManager(settings(domain_credential_mapping=mapping))
    assert m.validate_all() == []
    assert m.resolve("team1.example.com", {}).secret == TEAM1_KEY
    cred = m.resolve("team2.example.com", {})
    assert (cred.kind, cred.secret) == ("oauth", ACCESS)
    st = m.status()
    file_part = {"file": "credentials/team1.json", "found": True, "valid": True, "type": "api_key",
                 "expiresAt": None, "expired": False, "lastRefreshError": None, "lastRefresh": None,
                 "error": None, "source": "file"}
    assert {k: st["team1.example.com"][k] for k in file_part} == file_part
    assert st["team1.example.com"]["name"] == "team1.json" and st["team1.example.com"]["status"] == "ok"
    t2 = st["team2.example.com"]
    assert (t2["file"], t2["type"], t2["valid"], t2["expired"]) == ("~/team2.json", "oauth", True, False)
    assert t2["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires // 1000))


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"type": "password", "api_key": TEAM1_KEY}), "unknown \"type\""),
    (json.dumps({"type": "api_key", "api_key": ""}), '"api_key" is missing'),
    (json.dumps({"type": "oauth", "oauth": {"refreshToken": REFRESH}}), '"oauth.accessToken" is missing'),
    (json.dumps({"type": "oauth", "oauth": {"accessToken": ACCESS, "expiresAt": "soon"}}), "expiresAt"),
])
def test_invalid_files_warn_and_show_in_status(tmp_path, caplog, content, reason):
    path = write(tmp_path / "bad.json", content)
    m = CredentialManager(settings(domain_credential_mapping={"bad.example.com": path}))
    caplog.set_level(logging.WARNING, logger="app.services.credentials")
    warnings = m.validate_all()
    assert len(warnings) == 1 and "bad.example.com" in warnings[0] and "invalid" in warnings[0]
    assert reason in warnings[0]
    st = m.status()["bad.example.com"]
    assert (st["found"], st["valid"], st["type"]) == (True, False, None)
    assert reason in st["error"]
    assert warnings[0] in caplog.text
    assert_no_secret(json.dumps(st) + caplog.text + " ".join(warnings))


def test_missing_file_warns_and_proxy_keeps_working(tmp_path, two_teams):
    mapping = {"gone.example.com": str(tmp_path / "gone.json"), **two_teams}
    m = CredentialManager(settings(domain_credential_mapping=mapping))
    warnings = m.validate_all()
    assert warnings == [f"Credential file for 'gone.example.com' not found: {tmp_path / 'gone.json'}"]
    assert m.status()["gone.example.com"]["found"] is False
    assert m.resolve("team1.example.com", {}).secret == TEAM1_KEY


def test_file_readable_by_others_is_warned(tmp_path):
    path = api_key_file(tmp_path / "open.json", TEAM1_KEY)
    os.chmod(path, 0o644)
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": path}))
    warnings = m.validate_all()
    assert len(warnings) == 1 and "accessible by other users (mode 0644)" in warnings[0]
    assert m.resolve("a.example.com", {}).secret == TEAM1_KEY  # a warning, not a refusal


def test_oauth_without_refresh_token_is_warned(tmp_path):
    path = write(tmp_path / "o.json", {"type": "oauth", "oauth": {"accessToken": ACCESS, "expiresAt": None}})
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": path}))
    assert any("no refreshToken" in w for w in m.validate_all())


def test_extra_fields_client_api_key_and_slack(tmp_path):
    slack = {"webhook_url": "https://hooks.slack.com/services/T/B/X", "channel": "#team1"}
    path = api_key_file(tmp_path / "t.json", TEAM1_KEY, client_api_key="team1-proxy-key-0123456789", slack=slack)
    m = CredentialManager(settings(domain_credential_mapping={"team1.example.com": path}))
    assert m.client_api_key_for("Team1.example.com:3000") == "team1-proxy-key-0123456789"
    assert m.slack_override_for("team1.example.com") == slack
    assert m.client_api_key_for("other.example.com") is None
    assert m.slack_override_for("other.example.com") is None


def test_file_change_is_picked_up_within_a_second(tmp_path):
    clock = Clock()
    path = api_key_file(tmp_path / "t.json", TEAM1_KEY)
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": path}), clock=clock)
    assert m.resolve("a.example.com", {}).secret == TEAM1_KEY
    api_key_file(path, TEAM2_KEY)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 5_000_000_000))
    assert m.resolve("a.example.com", {}).secret == TEAM1_KEY  # checked at most once a second
    clock.advance(1.01)
    assert m.resolve("a.example.com", {}).secret == TEAM2_KEY
    os.unlink(path)
    clock.advance(1.01)
    with pytest.raises(ProxyError):
        m.resolve("a.example.com", {})
    assert m.status()["a.example.com"]["found"] is False
    api_key_file(path, TEAM1_KEY)
    clock.advance(1.01)
    assert m.resolve("a.example.com", {}).secret == TEAM1_KEY


def test_hot_path_stats_the_file_at_most_once_a_second(tmp_path, monkeypatch):
    clock = Clock()
    path = api_key_file(tmp_path / "t.json", TEAM1_KEY)
    m = CredentialManager(settings(domain_credential_mapping={"a.example.com": path}), clock=clock)
    m.resolve("a.example.com", {})
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(cmod.os, "stat", lambda p, *a, **k: calls.append(p) or real_stat(p, *a, **k))
    for i in range(1000):
        m.resolve("a.example.com:3000", {})
        clock.advance(0.0005)  # 0.5 s in total
    assert calls == []
    clock.advance(0.6)
    m.resolve("a.example.com", {})
    assert len(calls) == 1


def test_loaded_secrets_are_registered_for_masking(tmp_path):
    masking = pytest.importorskip("app.masking")
    odd = "team-secret-without-a-known-prefix-9876"
    path = write(tmp_path / "t.json", {"type": "api_key", "api_key": odd, "client_api_key": "proxy-side-key-5555"})
    CredentialManager(settings(domain_credential_mapping={"a.example.com": path})).validate_all()
    text = masking.mask_text(f"key {odd} and proxy-side-key-5555")
    assert odd not in text and "proxy-side-key-5555" not in text


def test_invalid_file_keeps_its_client_api_key_in_force(tmp_path):
    # a broken credential must not switch the domain's access control off
    path = write(tmp_path / "t.json", {"type": "api_key", "api_key": "", "client_api_key": "team1-proxy-key-0123456789"})
    m = CredentialManager(settings(domain_credential_mapping={"team1.example.com": path}))
    assert m.client_api_key_for("team1.example.com") == "team1-proxy-key-0123456789"
    with pytest.raises(ProxyError):
        m.resolve("team1.example.com", {})
