"""Fake upstream servers (OpenAI-compatible and Anthropic) and process helpers for end-to-end tests.

`tests.fakes.upstream` is the server (run as `python -m tests.fakes.upstream --port 0`);
`tests.fakes.server` has `FakeUpstream`, `ProxyServer` and the pytest fixtures.
"""
