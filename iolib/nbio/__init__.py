"""Non-blocking primitives that return a would-block marker instead of raising.

Each function makes one non-blocking system call and returns its result, or
``WOULD_BLOCK`` when the kernel said EAGAIN, so the caller decides whether
to wait and for what. Other errors are raised as the standard ``OSError``
subclasses. Nothing here waits, loops on EAGAIN, or knows about threads.
"""

from __future__ import annotations

import os
import socket
from typing import Any


class _WouldBlock:
    __slots__ = ()

    def __repr__(self) -> str:
        return "WOULD_BLOCK"

    def __bool__(self) -> bool:
        return False


WOULD_BLOCK: Any = _WouldBlock()


def recv(sock: socket.socket, size: int, flags: int = 0) -> Any:
    try:
        return sock.recv(size, flags)
    except BlockingIOError:
        return WOULD_BLOCK


def recv_into(sock: socket.socket, buffer: Any, size: int = 0, flags: int = 0) -> Any:
    try:
        return sock.recv_into(buffer, size, flags)
    except BlockingIOError:
        return WOULD_BLOCK


def recvfrom(sock: socket.socket, size: int, flags: int = 0) -> Any:
    try:
        return sock.recvfrom(size, flags)
    except BlockingIOError:
        return WOULD_BLOCK


def send(sock: socket.socket, data: Any, flags: int = 0) -> Any:
    try:
        return sock.send(data, flags)
    except BlockingIOError:
        return WOULD_BLOCK


def sendto(sock: socket.socket, data: Any, address: Any, flags: int = 0) -> Any:
    try:
        return sock.sendto(data, flags, address)
    except BlockingIOError:
        return WOULD_BLOCK


def accept(sock: socket.socket) -> Any:
    """``(fd, address)`` of a new connection, or WOULD_BLOCK. Returns the
    raw fd (``sock._accept``) so the caller wraps it once, its own way."""
    try:
        return sock._accept()
    except BlockingIOError:
        return WOULD_BLOCK


def connect(sock: socket.socket, address: Any) -> Any:
    """Start a connect. None when connected at once; WOULD_BLOCK while in
    progress (wait for writable, then call ``connect_result``)."""
    err = sock.connect_ex(address)
    if err == 0:
        return None
    if err in (115, 11, 114):  # EINPROGRESS, EAGAIN (unix sockets), EALREADY
        return WOULD_BLOCK
    raise OSError(err, f"{os.strerror(err)}: connect to {address!r}")


def connect_result(sock: socket.socket, address: Any = None) -> None:
    """Raise the outcome of a connect that was in progress, if it failed."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise _oserror(err, f"connect to {address!r}")


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> Any:
    """Bytes sent by one ``sendfile(2)``, 0 at end of file, or WOULD_BLOCK."""
    try:
        return os.sendfile(out_fd, in_fd, offset, count)
    except BlockingIOError:
        return WOULD_BLOCK


def read(fd: int, size: int) -> Any:
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return WOULD_BLOCK


def write(fd: int, data: Any) -> Any:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return WOULD_BLOCK


def _oserror(err: int, what: str) -> OSError:
    # OSError(errno, ...) picks the matching subclass (ConnectionRefusedError, ...).
    return OSError(err, f"{os.strerror(err)}: {what}")
