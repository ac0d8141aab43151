"""The one rule for the key a client presents (README: "The client's key")."""
import pytest

from app.client_key import presented_key


@pytest.mark.parametrize("headers,expected", [
    ({}, None),
    ({"x-api-key": "k1"}, "k1"),
    ({"x-api-key": "  k1 \t"}, "k1"),
    ({"authorization": "Bearer t1"}, "t1"),
    ({"authorization": "bearer   t1  "}, "t1"),
    ({"authorization": "BEARER t1"}, "t1"),
    # both present: x-api-key wins
    ({"x-api-key": "k1", "authorization": "Bearer t1"}, "k1"),
    # a blank x-api-key counts as absent: the Bearer token is the key
    ({"x-api-key": "", "authorization": "Bearer t1"}, "t1"),
    ({"x-api-key": "   ", "authorization": "Bearer t1"}, "t1"),
    # blank everywhere, or another scheme: no key
    ({"x-api-key": "  ", "authorization": "Bearer   "}, None),
    ({"authorization": "Basic dXNlcjpwYXNz"}, None),
    ({"authorization": "Bearer"}, None),
    ({"authorization": "t1"}, None),
])
def test_presented_key(headers, expected):
    assert presented_key(headers) == expected
