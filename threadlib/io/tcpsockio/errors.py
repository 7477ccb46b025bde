"""Errors of the user-level stack, as the kernel would raise them.

The stack (``iolib.tcp``) keeps one error object per connection; callers get
a fresh ``OSError`` subclass with the kernel's errno, so code written for
kernel sockets catches the same classes. Nothing here waits or touches a
connection.
"""

from __future__ import annotations

import errno

from iolib.tcp import errors as tcperr


class NetUnreachable(tcperr.NetUnreachable):
    """No route to the destination (errno ENETUNREACH): no local address of
    its family, or outside every route of the network."""


class ClosedByPeer(tcperr.ConnectionReset, BrokenPipeError):
    """The peer reset the connection (errno ECONNRESET): both a
    ConnectionResetError and a BrokenPipeError, so code written for either
    kernel error catches it."""


class ConnectionRefused(tcperr.ConnectionRefused):
    """The peer answered the SYN with a RST (errno ECONNREFUSED)."""


def translate(exc: BaseException) -> BaseException:
    """A fresh exception for the caller: the stack keeps one error object
    per connection, and raising that same object again and again would
    grow its traceback without end."""
    if isinstance(exc, tcperr.ConnectionRefused):
        return ConnectionRefused(errno.ECONNREFUSED, str(exc))
    if isinstance(exc, tcperr.ConnectionReset):
        return ClosedByPeer(errno.ECONNRESET, str(exc))
    if isinstance(exc, tcperr.NetUnreachable):
        return NetUnreachable(errno.ENETUNREACH, str(exc))
    if isinstance(exc, tcperr.InvalidState):
        return BrokenPipeError(errno.EPIPE, str(exc))
    if isinstance(exc, tcperr.ConnectionTimedOut):
        return tcperr.ConnectionTimedOut(errno.ETIMEDOUT, str(exc))
    if isinstance(exc, tcperr.HostUnreachable):
        return tcperr.HostUnreachable(errno.EHOSTUNREACH, str(exc))
    if isinstance(exc, tcperr.ConnectionAborted):
        return tcperr.ConnectionAborted(errno.ECONNABORTED, str(exc))
    return exc


def closed_error(what: str) -> OSError:
    """The error for using ``what`` (a stream, a listener) after close: EBADF."""
    return OSError(errno.EBADF, f"{what} is closed")
