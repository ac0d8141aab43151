"""The worker's cached forms of gunicorn's per-request steps answer what gunicorn itself answers."""
from __future__ import annotations

import email.utils

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message

from app import server_tuning


@pytest.fixture
def restore(monkeypatch):
    # The tuning replaces module attributes; monkeypatch puts the originals back after each test.
    monkeypatch.setattr(util, "http_date", util.http_date)
    monkeypatch.setattr(message, "_ip_in_allow_list", message._ip_in_allow_list)


def test_the_date_header_is_the_current_second_formatted_as_gunicorn_does(restore, monkeypatch):
    server_tuning.cache_date_header()
    clock = [1_796_000_000.25]
    monkeypatch.setattr(server_tuning.time, "time", lambda: clock[0])
    formatted = []
    formatdate = email.utils.formatdate
    monkeypatch.setattr(email.utils, "formatdate", lambda *a, **k: formatted.append(a) or formatdate(*a, **k))
    assert util.http_date() == "Mon, 30 Nov 2026 00:53:20 GMT"
    clock[0] = 1_796_000_000.99
    assert util.http_date() == "Mon, 30 Nov 2026 00:53:20 GMT"
    assert len(formatted) == 1  # once for the whole second
    clock[0] = 1_796_000_001.01  # the next second: a new header, not the cached one
    assert util.http_date() == "Mon, 30 Nov 2026 00:53:21 GMT"
    assert util.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # an explicit time is formatted as asked


def test_forwarded_trust_is_the_allow_lists_answer_for_each_peer(restore):
    original = message._ip_in_allow_list
    server_tuning.cache_forwarded_trust()
    cached = message._ip_in_allow_list
    assert cached is not original
    cfg = Config()
    cfg.set("forwarded_allow_ips", "127.0.0.1,10.0.0.0/8,::1")
    allow, networks = cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()
    for peer in ["127.0.0.1", "10.2.3.4", "::1", "192.168.1.1", "not-an-ip", "10.2.3.4", "192.168.1.1"]:
        assert cached(peer, allow, networks) == original(peer, allow, networks), peer
    other = Config()
    other.set("forwarded_allow_ips", "192.168.1.1")
    # Another allow list is its own question, even for a peer already answered.
    assert cached("192.168.1.1", other.forwarded_allow_ips, other.forwarded_allow_networks()) is True
    assert cached("192.168.1.1", allow, networks) is False
    server_tuning.cache_forwarded_trust()  # a second call does not wrap the wrapper
    assert message._ip_in_allow_list is cached


def test_frozen_settings_read_as_before_and_properties_keep_their_meaning():
    cfg = Config()
    cfg.set("keepalive", 75)
    cfg.set("forwarded_allow_ips", "127.0.0.1")
    before = {name: getattr(cfg, name) for name in cfg.settings if not hasattr(Config, name)}
    worker_class = cfg.worker_class
    server_tuning.freeze_settings(cfg)
    assert {name: getattr(cfg, name) for name in before} == before
    assert "keepalive" in vars(cfg)  # read without Config.__getattr__ from now on
    assert cfg.worker_class is worker_class
    assert cfg.forwarded_allow_networks()  # methods are still methods
