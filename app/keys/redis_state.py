"""The limiter's state across hosts: Redis, with each step one Lua script (atomic on the server).

The scripts are limits.py's steps written again in Lua, against Redis's own clock (`TIME`) so hosts whose
clocks differ still share one window. Per key: `<prefix>{<key id>}:r` and `:t` (hashes of one-second
bucket -> requests / tokens) and `:l` (a sorted set of lease id -> expiry). Every key expires on its own.
"""
from __future__ import annotations

import threading
from typing import Iterable

from .limits import LEASE_TTL, WINDOW, Limits, Verdict

_PRELUDE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local oldest = sec - window + 1
local function load(key, prune)
  local flat = redis.call('HGETALL', key)
  local total, stale = 0, {}
  for i = 1, #flat, 2 do
    if tonumber(flat[i]) < oldest then stale[#stale + 1] = flat[i] else total = total + tonumber(flat[i + 1]) end
  end
  if prune and #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, flat
end
"""

ADMIT = _PRELUDE + """
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, lease = tonumber(ARGV[5]), ARGV[6]
-- The buckets in order, only for a refusal (an admitted request needs the totals alone).
local function free_at(flat, need)
  local items = {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s >= oldest then items[#items + 1] = {s, tonumber(flat[i + 1])} end
  end
  table.sort(items, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, it in ipairs(items) do
    freed = freed + it[2]
    if freed >= need then return it[1] + window end
  end
  return now
end
local req_used, req_items, tok_used, tok_items, live = 0, {}, 0, {}, 0
if rpm > 0 then req_used, req_items = load(KEYS[1], true) end
if tpm > 0 then tok_used, tok_items = load(KEYS[2], true) end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  live = redis.call('ZCARD', KEYS[3])
end
local req_free, tok_free, reason = -1, -1, ''
if rpm > 0 and req_used >= rpm then req_free = free_at(req_items, req_used - rpm + 1) end
if tpm > 0 and tok_used >= tpm then tok_free = free_at(tok_items, tok_used - tpm + 1) end
if req_free >= 0 then reason = 'requests'
elseif tok_free >= 0 then reason = 'tokens'
elseif conc > 0 and live >= conc then reason = 'concurrency' end
if reason == '' then
  if rpm > 0 then
    redis.call('HINCRBY', KEYS[1], sec, 1)
    redis.call('EXPIRE', KEYS[1], window + 5)
    req_used = req_used + 1
  end
  if conc > 0 and lease ~= '' then
    redis.call('ZADD', KEYS[3], now + ttl, lease)
    redis.call('EXPIRE', KEYS[3], math.ceil(ttl) + 5)
    live = live + 1
  end
end
return table.concat({reason, tostring(now), string.format('%d', req_used), string.format('%d', tok_used),
  string.format('%d', live), tostring(req_free), tostring(tok_free)}, ' ')
"""

FINISH = _PRELUDE + """
local lease, tokens = ARGV[2], tonumber(ARGV[3])
if lease ~= '' then redis.call('ZREM', KEYS[3], lease) end
if tokens > 0 then
  redis.call('HINCRBY', KEYS[2], sec, tokens)
  redis.call('EXPIRE', KEYS[2], window + 5)
end
return 1
"""

RENEW = _PRELUDE + """
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('ZADD', KEYS[3], 'XX', now + ttl, ARGV[i]) end
if #ARGV > 2 then redis.call('EXPIRE', KEYS[3], math.ceil(ttl) + 5) end
return 1
"""

USAGE = _PRELUDE + """
local req = load(KEYS[1], false)
local tok = load(KEYS[2], false)
local live = redis.call('ZCOUNT', KEYS[3], '(' .. tostring(now), '+inf')
return {req, tok, live}
"""


def _bulk(value) -> bytes:
    """One argument as RESP, encoded as redis-py encodes it (numbers by their repr)."""
    raw = value if isinstance(value, bytes) else (value if isinstance(value, str) else repr(value)).encode()
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


# The packed start of each key's ADMIT and FINISH command (everything but the lease id and tokens) is kept:
# packing the whole command again on every request cost more than the step's own work. A bound on how many.
MAX_HEADS = 4096

def _error(message: str) -> Exception:
    from redis.exceptions import NoScriptError, ResponseError

    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Link:
    """One of our connections to Redis, for ADMIT and FINISH. redis-py opens it (TLS, AUTH, SELECT, HELLO: the
    URL's every option) and it is then spoken to directly: redis-py's send and reply layers cost the request
    more than the step itself (~15 us a request in one process, twice that in a worker). Each reply read is one
    of the two kinds those scripts give, a bulk string or an integer, or an error."""

    __slots__ = ("conn", "sock", "buf")

    def __init__(self, conn) -> None:
        conn.connect()
        self.conn, self.sock, self.buf = conn, conn._sock, b""

    def send(self, data: bytes) -> None:
        sent = self.sock.send(data)  # a command fits the socket's buffer: sendall would add a syscall a call
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def reply(self):
        """The next reply: bytes or int; an error reply is raised (NoScriptError, ResponseError)."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n")
            if end > 0:
                kind = buf[0]
                if kind == 0x24:  # $<size>\r\n<data>\r\n
                    size = int(buf[1:end])
                    if size < 0:
                        self.buf = buf[end + 2:]
                        return None
                    stop = end + 2 + size
                    if len(buf) >= stop + 2:
                        self.buf = buf[stop + 2:]
                        return buf[end + 2:stop]
                elif kind == 0x3A:  # :<integer>\r\n
                    self.buf = buf[end + 2:]
                    return int(buf[1:end])
                elif kind == 0x2D:  # -<error>\r\n
                    self.buf = buf[end + 2:]
                    raise _error(buf[1:end].decode("utf-8", "replace"))
                else:
                    raise OSError(f"unexpected reply from Redis: {buf[:40]!r}")
            chunk = self.sock.recv(65536)  # the connection's socket_timeout bounds the wait
            if not chunk:
                raise OSError("Redis closed the connection")
            buf += chunk

    def close(self) -> None:
        self.conn.disconnect()


# A finished request's step (free its lease, count its tokens) is written to Redis at once on a connection of
# its own, and its reply is read later, when it is already there: Redis runs the step within microseconds, long
# before the client can send its next request, while the request path never waits for that round trip (under
# gevent a wait costs ~55 µs of CPU). Every this many steps their replies, arrived long since, are read in one go.
MAX_UNREAD = 64


class RedisState:
    """Rate-limit state shared by every host that uses the same Redis and prefix."""

    backend = "redis"

    def __init__(self, url: str, prefix: str = "nexus:", timeout: float = 0.5, client=None) -> None:
        import redis

        self.prefix = prefix
        self.errors = (redis.RedisError, OSError)
        self._noscript = redis.exceptions.NoScriptError
        # Short timeouts: while Redis is away a request waits at most this long before the fail mode decides.
        self.client = client or redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                     retry_on_timeout=False)
        self._sha: dict[str, str] = {}
        self._heads: dict[tuple, bytes] = {}  # (script, key id, fixed args) -> packed start of the command
        self._finisher: _Link | None = None  # the connection finished steps are written on
        self._idle: list[_Link] = []  # our connections not in use (one per greenlet waiting on Redis at once)
        self._reply_error = redis.exceptions.ResponseError
        self._unread = 0
        self._finish_lock = threading.Lock()

    def _keys(self, key_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}{{{key_id}}}:"
        return base + "r", base + "t", base + "l"

    def _load_scripts(self) -> None:
        self._heads.clear()
        for script in (ADMIT, FINISH, RENEW, USAGE):
            self._sha[script] = self.client.script_load(script)

    def _head(self, script: str, key_id: str, fixed: tuple, more: int) -> bytes:
        """`EVALSHA <sha> 3 <keys> <fixed...>` packed, for a command that ends with `more` arguments."""
        head = self._heads.get((script, key_id, fixed))
        if head is None:
            if not self._sha:
                self._load_scripts()
            keys = self._keys(key_id)
            args = ("EVALSHA", self._sha[script], len(keys), *keys, *fixed)
            head = b"*%d\r\n" % (len(args) + more) + b"".join(map(_bulk, args))
            if len(self._heads) >= MAX_HEADS:
                self._heads.clear()
            self._heads[(script, key_id, fixed)] = head
        return head

    def _new_link(self) -> _Link:
        """A connection like the client's own, but one the server never pushes to: a link reads replies only, and
        redis-py would ask Redis Enterprise and Cloud for maintenance notices on every RESP3 connection."""
        pool = self.client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        if "maint_notifications_config" in kwargs:
            from redis.maint_notifications import MaintNotificationsConfig

            kwargs.update(maint_notifications_config=MaintNotificationsConfig(enabled=False),
                          maint_notifications_pool_handler=None)
        return _Link(pool.connection_class(**kwargs))

    def _run(self, script: str, keys: tuple, *args):
        """A step off the request path (renewals, `keys show`), through redis-py's own pool."""
        if not self._sha:
            self._load_scripts()
        try:
            return self.client.evalsha(self._sha[script], len(keys), *keys, *args)
        except self._noscript:  # the server restarted or flushed its scripts
            self._load_scripts()
            return self.client.evalsha(self._sha[script], len(keys), *keys, *args)

    def _call(self, packed: bytes):
        """One packed command and its reply on a connection of our own: redis-py's pool checks each connection
        it hands out with a poll, which costs more than the step itself; ours are only checked by using them."""
        link = self._idle.pop() if self._idle else self._new_link()
        try:
            link.send(packed)
            reply = link.reply()
        except self._reply_error:
            self._idle.append(link)  # the command failed, the connection is fine
            raise
        except BaseException:
            link.close()
            raise
        self._idle.append(link)
        return reply

    def _drain(self, link: _Link) -> None:
        """Read the replies of the finished steps sent so far (long arrived: reading them does not wait)."""
        while self._unread:
            self._unread -= 1
            try:
                link.reply()
            except self._noscript:
                # Redis lost its scripts (a restart lost the windows too); load them again
                self._sha.clear()
                self._heads.clear()
            except self._reply_error:
                pass

    def _send_finish(self, key_id: str, tail: bytes) -> None:
        with self._finish_lock:
            link = self._finisher
            try:
                if link is None:
                    link = self._finisher = self._new_link()
                if self._unread >= MAX_UNREAD:
                    self._drain(link)  # may find the scripts gone: then _head loads them again
                link.send(self._head(FINISH, key_id, (WINDOW,), 2) + tail)
                self._unread += 1
            except BaseException:
                self._finisher, self._unread = None, 0
                if link is not None:
                    link.close()
                raise

    def flush(self) -> None:
        """Wait for every finished step's reply (tests, `keys show`, shutdown)."""
        with self._finish_lock:
            link = self._finisher
            if link is not None and self._unread:
                try:
                    self._drain(link)
                except BaseException:
                    self._finisher, self._unread = None, 0
                    link.close()
                    raise

    def admit(self, key_id: str, lim: Limits, now: float, lease_id: str | None) -> Verdict:
        fixed = (WINDOW, lim.rpm or 0, lim.tpm or 0, lim.concurrency or 0, LEASE_TTL)
        lease = _bulk(lease_id or "")
        try:
            out = self._call(self._head(ADMIT, key_id, fixed, 1) + lease)
        except self._noscript:  # the server restarted or flushed its scripts
            self._load_scripts()
            out = self._call(self._head(ADMIT, key_id, fixed, 1) + lease)
        # one string, "<reason> <now> <requests> <tokens> <in flight> <requests free at> <tokens free at>"
        reason, server_now, req_used, tok_used, live, req_free, tok_free = (
            out.decode() if isinstance(out, bytes) else out).split(" ")
        req_at, tok_at = float(req_free), float(tok_free)
        return Verdict(not reason, reason or None, float(server_now), int(req_used), int(tok_used), int(live),
                       req_at if req_at >= 0 else None, tok_at if tok_at >= 0 else None)

    def finish(self, key_id: str, lease_id: str | None, tokens: int, now: float, count_tokens: bool) -> None:
        self._send_finish(key_id, _bulk(lease_id or "") + _bulk(int(tokens) if count_tokens else 0))

    def renew(self, leases: Iterable[tuple[str, str]], now: float) -> None:
        by_key: dict[str, list[str]] = {}
        for key_id, lease_id in leases:
            by_key.setdefault(key_id, []).append(lease_id)
        for key_id, ids in by_key.items():
            self._run(RENEW, self._keys(key_id), WINDOW, LEASE_TTL, *ids)

    def usage(self, key_id: str, now: float) -> tuple[int, int, int]:
        self.flush()
        req, tok, live = self._run(USAGE, self._keys(key_id), WINDOW)
        return int(req), int(tok), int(live)

    def ping(self) -> None:
        self.flush()
        self.client.ping()

    def healthy(self) -> bool:
        try:
            return bool(self.client.ping())
        except self.errors:
            return False

    def close(self) -> None:
        try:
            self.flush()
        except Exception:
            pass
        for link in [*self._idle, *([self._finisher] if self._finisher is not None else [])]:
            link.close()
        self._idle, self._finisher = [], None
        try:
            self.client.close()
        except Exception:
            pass
