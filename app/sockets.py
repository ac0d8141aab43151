"""A gevent socket whose `sendall` costs one `send` when the kernel takes the data at once.

gevent's own `sendall` asks the kernel for the send-buffer size (a `getsockopt` syscall) on every call
before its first send. The proxy calls `sendall` once per relayed piece of a stream towards the client,
and once or twice per request towards the upstream, so that syscall is paid per event. Both sides' plain
TCP sockets are switched to this class; TLS sockets keep their own `sendall`.
"""
from __future__ import annotations

from gevent import socket as gsocket


class OneSendSocket(gsocket.socket):
    __slots__ = ()

    def sendall(self, data, flags: int = 0):
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return None
        return gsocket.socket.sendall(self, memoryview(data)[sent:], flags)


_PLAIN = (gsocket.socket, OneSendSocket)


def plain_tcp(sock: object) -> bool:
    """A gevent socket that is not TLS: the proxy may read and write its OS socket directly."""
    return type(sock) in _PLAIN


def one_send(sock: object) -> None:
    """Switch a plain gevent TCP socket to `OneSendSocket`; anything else (TLS, an unpatched stdlib
    socket in a test run without gevent's monkey-patching) is left as it is."""
    if type(sock) is gsocket.socket:
        sock.__class__ = OneSendSocket
