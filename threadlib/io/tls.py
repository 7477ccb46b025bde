"""TLS over any stream: ``tls.wrap(stream, context)`` gives a stream that
keeps the ``threadlib.net.Stream`` contract, whatever carries it (kernel
sockets, the user-level TCP stack, a later network).

The encryption is Python's ``ssl.SSLObject`` over two ``ssl.MemoryBIO``
(trio's SSLStream design): OpenSSL never sees a socket, only bytes that
this module moves between the BIOs and the transport with the transport's
own ``recv``/``send``. So TLS needs nothing of a network but the Stream
contract. This module must never block the process (OpenSSL works on
memory only; every wait is the transport's), never touch the transport
outside the locks below, and never read a clock but the scheduler's.

Design
------
TLS couples the two directions: a read may have to write (handshake
messages, a TLS 1.3 KeyUpdate answer, alerts) and a write may have to
read (during a handshake). The transport allows one reader and one writer
at a time, and so do we, with one ``threadlib.Mutex`` per transport
direction:

* ``_recv_lock`` is held while waiting in ``transport.recv``; what comes
  in is written to the incoming BIO before the lock is released, with no
  wait in between, so no byte is ever lost to a timeout or a cancellation.
* ``_send_lock`` is held while ciphertext is taken from the outgoing BIO
  and sent. Ciphertext must leave in the order OpenSSL produced it, so it
  is read from the BIO only under this lock, and whoever holds the lock
  sends everything the BIO holds before releasing it.
* A reader whose read produced output never waits for ``_send_lock``: if
  it is free the reader takes it (at once) and sends; if a writer holds
  it, that writer sends the reader's bytes too before it lets go (the rule
  above). So a thread in ``recv`` and a thread in ``sendall`` run
  concurrently and never deadlock on each other.
* A writer that needs input (``SSLWantReadError`` from a write) sends what
  it has, lets ``_send_lock`` go, reads under ``_recv_lock`` (or lets a
  reader that got there first do it: a counter of transport reads tells),
  and retries.
* The handshake runs once, under ``_handshake_lock``, in the first thread
  that reads or writes (or calls ``do_handshake``); the others wait for it.
  It is bounded by ``handshake_timeout`` from its first attempt; if it
  fails the transport is closed and every later call raises.

Ciphertext handed to ``transport.send`` is kept until the transport took
all of it: a timeout or cancellation in the middle of a write leaves the
rest queued, and it goes first at the next write (or at the next read,
which flushes before it waits). The plaintext of such a write is
committed: TLS cannot take encrypted bytes back, so unlike a kernel socket
a ``send`` interrupted by its timeout may still deliver what it encrypted.

Closing and half-closing
------------------------
``shutdown(SHUT_WR)`` sends close_notify and then the transport's FIN
(after the write at work, if a thread is in ``sendall``: close_notify
must follow the last record); reading still works. TLS 1.3 (RFC 8446,
6.1) makes close_notify a half-close, and OpenSSL reads on after sending
one, so the contract's half-close holds both ways; a TLS 1.2 peer may instead answer with its own
close_notify and drop what it had not sent. A peer's close_notify makes
``recv`` return ``b""`` (a clean end). A transport EOF *without*
close_notify (a "ragged EOF") may be an attacker truncating the stream, so
it raises ``ssl.SSLEOFError``, unless the stream was made with
``ragged_eof=True`` (trio's ``https_compatible``): protocols that frame
their own messages (HTTP with Content-Length or chunks) are safe with it,
and most HTTPS clients close without close_notify. ``close`` never waits:
it puts close_notify on the wire if the transport takes it at once, else
a small thread goes on sending it, and closes the transport once the
peer has taken nothing for ``CLOSE_LINGER`` seconds (nginx's
``lingering_timeout`` rule); ``unwrap`` sends close_notify, waits for
the peer's and hands the transport back.

Renegotiation is refused: TLS 1.3 has none, and ``ssl.OP_NO_RENEGOTIATION``
is set on every context passed here (for TLS 1.2 peers).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl as _ssl
import types
from typing import Any

from .._kernel import current_scheduler
from ..calls import now as _now
from ..calls import timeout as _timeout
from ..calls import timeout_at as _timeout_at
from ..net import Address, Call, Listener, Network, Stream
from ..sync import Mutex
from ..syscalls import Waits

__all__ = [
    "wrap",
    "TlsStream",
    "TlsListener",
    "TlsNetwork",
    "HandshakeTimeout",
    "describe_error",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "CLOSE_LINGER",
]

#: Seconds a handshake may take from its first attempt (None: no limit).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds without progress after which ``close`` stops sending what the transport could not take at once (close_notify).
CLOSE_LINGER = 3.0

# Plaintext encrypted per step of a long write: bounds the ciphertext held
# in memory and lets a concurrent reader's output interleave.
_WRITE_CHUNK = 256 * 1024
_READ_SIZE = 65536

_HANDSHAKING, _OPEN, _FAILED = 0, 1, 2



class HandshakeTimeout(TimeoutError):
    """The TLS handshake did not finish within its ``handshake_timeout``;
    the connection has been closed."""


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed TLS connection, for logs: names the
    usual bad inputs (plaintext HTTP on a TLS port, a client that is not
    speaking TLS, a peer gone mid-handshake, a certificate the verifier
    refused) and falls back on ``str(exc)``."""
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, _ssl.SSLEOFError):
        return "the peer closed the connection without a TLS close_notify (mid-handshake or truncated)"
    if isinstance(exc, _ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if reason == "HTTP_REQUEST":
            return "a plaintext HTTP request on the TLS port"
        if reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "UNSUPPORTED_PROTOCOL", "RECORD_LAYER_FAILURE",
                      "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH"):
            return f"not a TLS handshake, or a TLS version not allowed here ({reason.lower().replace('_', ' ')})"
        if reason:
            return f"TLS error: {reason.lower().replace('_', ' ')}"
    if isinstance(exc, HandshakeTimeout):
        return str(exc)
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    return str(exc) or type(exc).__name__


def _prepare(context: _ssl.SSLContext) -> _ssl.SSLContext:
    if not isinstance(context, _ssl.SSLContext):
        raise TypeError(f"TLS needs an ssl.SSLContext, got {type(context).__name__}")
    if not context.options & _ssl.OP_NO_RENEGOTIATION:
        context.options |= _ssl.OP_NO_RENEGOTIATION
    return context


def _closed_error() -> OSError:
    return OSError(errno.EBADF, "the TLS stream is closed")


class TlsStream:
    """A TLS connection over ``transport`` (any ``threadlib.net.Stream``),
    itself a ``threadlib.net.Stream``.

    Made directly, the handshake is lazy: it runs at the first ``recv``,
    ``send`` (or ``do_handshake``), in that caller's thread, bounded by
    ``handshake_timeout`` seconds. ``wrap`` makes one and handshakes at
    once. The stream owns the transport: ``close`` closes it.
    """

    __slots__ = ("_transport", "_sslobj", "_incoming", "_outgoing", "_unsent", "_send_lock", "_recv_lock",
                 "_handshake_lock", "_state", "_failure", "_handshake_timeout", "_handshake_deadline",
                 "_ragged_eof", "_read_eof", "_write_shut", "_shut_pending", "_closed", "_reads", "_held")

    def __init__(self, transport: Stream, context: _ssl.SSLContext, *, server_side: bool = False,
                 server_hostname: str | None = None, handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 ragged_eof: bool = False) -> None:
        _prepare(context)
        if server_side and server_hostname is not None:
            raise ValueError("server_hostname is for the client side (the server learns the name by SNI)")
        self._transport = transport
        self._incoming = _ssl.MemoryBIO()
        self._outgoing = _ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                        server_hostname=server_hostname)
        self._unsent: memoryview | None = None  # ciphertext taken from the BIO, not yet taken by the transport
        self._send_lock = Mutex()
        self._recv_lock = Mutex()
        self._handshake_lock = Mutex()
        self._state = _HANDSHAKING
        self._failure: BaseException | None = None
        self._handshake_timeout = handshake_timeout
        self._handshake_deadline: float | None = None
        self._ragged_eof = ragged_eof
        self._read_eof = False      # the peer's close_notify (or a tolerated ragged EOF) was read
        self._write_shut = False    # our close_notify is queued: no more writes
        self._shut_pending = False  # close_notify and the FIN wait for the writer holding _send_lock
        self._closed = False
        self._reads = 0             # transport reads so far: lets a writer see a reader got input
        self._held: memoryview | None = None  # plaintext decrypted early by _queue_close_notify, not yet read

    # -- introspection ---------------------------------------------------------
    @property
    def transport(self) -> Stream:
        """The stream TLS runs over."""
        return self._transport

    @property
    def ssl_object(self) -> _ssl.SSLObject:
        """The ``ssl.SSLObject`` (for what has no method here, e.g.
        ``get_channel_binding``). Reading or writing through it directly
        would break the stream."""
        return self._sslobj

    @property
    def local_address(self) -> Address:
        """This end's address (the transport's)."""
        return self._transport.local_address

    @property
    def peer_address(self) -> Address:
        """The other end's address (the transport's)."""
        return self._transport.peer_address

    @property
    def closed(self) -> bool:
        """Whether ``close`` (or ``unwrap``) was called."""
        return self._closed

    @property
    def server_side(self) -> bool:
        """Whether this end is the TLS server."""
        return self._sslobj.server_side

    @property
    def server_hostname(self) -> str | None:
        """On a client, the name sent by SNI and verified; None on a server
        (a server sees the client's SNI name in ``context.sni_callback``)."""
        return self._sslobj.server_hostname

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake has completed."""
        return self._state == _OPEN

    def selected_alpn_protocol(self) -> str | None:
        """The protocol agreed by ALPN, or None."""
        return self._sslobj.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate (``ssl.SSLSocket.getpeercert``): a dict
        once verified, DER bytes with ``binary_form``; None if it sent none."""
        return self._sslobj.getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        """``(name, protocol, secret bits)`` of the cipher in use."""
        return self._sslobj.cipher()

    def version(self) -> str | None:
        """The TLS version agreed ("TLSv1.3"), None before the handshake."""
        return self._sslobj.version()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._state == _OPEN else
                                                "failed" if self._state == _FAILED else "handshaking")
        return f"<TlsStream {state} over {self._transport!r}>"

    def __enter__(self) -> TlsStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> TlsStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    # -- moving bytes -----------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise _closed_error()
        if self._failure is not None:
            raise self._failure.with_traceback(None)

    @types.coroutine
    def _flush_locked(self, stall: float | None = None) -> Waits[None]:
        """Send the unsent ciphertext and everything in the outgoing BIO;
        the caller holds ``_send_lock``. ``stall``: TimeoutError once the
        transport has taken nothing for that many seconds."""
        out = self._outgoing
        send = self._transport.send
        while True:
            view = self._unsent
            if view is None:
                if not out.pending:
                    return
                view = self._unsent = memoryview(out.read())
            n = yield from send(view, stall)
            self._unsent = view[n:] if n < len(view) else None

    @types.coroutine
    def _flush(self) -> Waits[None]:
        lock = self._send_lock
        yield from lock.acquire()
        try:
            yield from self._flush_locked()
        finally:
            self._release_send()

    def _release_send(self) -> None:
        if self._shut_pending:
            # shutdown() came while this writer was at work: its data is all
            # encrypted now, so close_notify may follow it.
            self._shut_pending = False
            self._queue_close_notify()
            sent = self._send_now()
            self._send_lock.release()
            self._after_close_notify(sent)
            return
        self._send_lock.release()

    @types.coroutine
    def _flush_for_reader(self) -> Waits[None]:
        """Output made by a read: send it, unless a writer holds the lock,
        which then sends it before letting go (never wait for a writer)."""
        if not self._send_lock.locked():
            yield from self._flush()

    @types.coroutine
    def _fill(self) -> Waits[None]:
        """Wait for input from the transport into the incoming BIO. Returns
        without reading if another thread read while this one waited for
        the lock (the caller retries with what that thread brought)."""
        if self._unsent is not None or self._outgoing.pending:
            yield from self._flush_for_reader()  # never wait for the peer while it waits for us
        reads = self._reads
        lock = self._recv_lock
        yield from lock.acquire()
        try:
            if self._reads != reads or self._incoming.eof:
                return  # fresh input to try, or none will ever come
            if self._closed:
                raise _closed_error()
            data = yield from self._transport.recv(_READ_SIZE)
            self._reads += 1
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
        finally:
            lock.release()

    # -- the handshake ------------------------------------------------------------
    @types.coroutine
    def do_handshake(self, timeout: float | None = None) -> Waits[None]:
        """Complete the handshake now (the first read or write does it
        otherwise). ``timeout`` bounds this call; ``handshake_timeout``
        bounds the handshake from its first attempt and, when it passes,
        closes the connection and raises ``HandshakeTimeout``. Handshake
        errors (``ssl.SSLError`` and subclasses such as
        ``ssl.SSLCertVerificationError``, ``ssl.SSLEOFError`` when the peer
        closed) close the connection; every later call raises them again.
        An interruption by ``timeout``, an enclosing scope or a cancel
        leaves the handshake to be resumed by the next call."""
        if self._state == _OPEN:
            return
        with _timeout(timeout):
            yield from self._handshake()

    @types.coroutine
    def _handshake(self) -> Waits[None]:
        self._check()
        lock = self._handshake_lock
        yield from lock.acquire()
        try:
            if self._state == _OPEN:
                return
            self._check()
            if self._handshake_deadline is None and self._handshake_timeout is not None:
                self._handshake_deadline = _now() + self._handshake_timeout
            deadline = self._handshake_deadline
            scope = _timeout_at(deadline) if deadline is not None else _timeout(None)
            try:
                with scope:
                    yield from self._handshake_steps()
            except TimeoutError as exc:
                if not scope.expired:
                    raise  # the caller's own deadline or timeout: the next call resumes
                failure = HandshakeTimeout(f"TLS handshake with {self._peer_text()} not finished within "
                                           f"{self._handshake_timeout:g} s")
                self._fail(failure)
                raise failure from exc
            except (OSError, EOFError) as exc:  # ssl.SSLError and the transport's errors
                if not self._closed:
                    self._fail(exc)
                raise
        finally:
            lock.release()

    @types.coroutine
    def _handshake_steps(self) -> Waits[None]:
        sslobj = self._sslobj
        while True:
            try:
                sslobj.do_handshake()
                break
            except _ssl.SSLWantReadError:
                pass
            yield from self._fill()
        self._state = _OPEN
        if self._unsent is not None or self._outgoing.pending:
            yield from self._flush()  # our last flight (Finished, session tickets)

    def _peer_text(self) -> str:
        try:
            peer = self._transport.peer_address
        except OSError:
            return "a closed connection"
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = str(peer[0])
            return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        return str(peer)

    def _fail(self, exc: BaseException) -> None:
        """The handshake failed: send the alert OpenSSL made, if the
        transport takes it at once, and close the connection."""
        self._state = _FAILED
        self._failure = exc
        if not self._send_lock.locked():
            self._send_now()
        self._transport.close()

    # -- reading -------------------------------------------------------------------
    def _read_result(self, exc: _ssl.SSLError) -> bool:
        """For an exception from ``SSLObject.read``: True when it means the
        end of the stream, False when more input is needed; raises the rest."""
        if isinstance(exc, _ssl.SSLWantReadError):
            return False
        if isinstance(exc, _ssl.SSLZeroReturnError):  # close_notify (after ours, CPython raises instead of b"")
            self._read_eof = True
            return True
        if isinstance(exc, _ssl.SSLEOFError) and self._ragged_eof:
            self._read_eof = True
            return True
        raise exc

    @types.coroutine
    def _within(self, call: Any, timeout: float | None) -> Waits[Any]:
        """``call`` (a waiting method's body) after the handshake, both
        within ``timeout``. The common call, with no timeout on an open
        stream, runs its body directly: no generator and no scope more."""
        with _timeout(timeout):
            if self._state != _OPEN:
                yield from self._handshake()
            return (yield from call)

    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Call[bytes]:
        """Up to ``max_bytes`` bytes of plaintext (at least one); ``b""``
        once the peer's close_notify was read (or a transport EOF, with
        ``ragged_eof``); ``ssl.SSLEOFError`` at a transport EOF without
        close_notify. The handshake first, if it is still to do. On
        ``timeout`` or cancellation nothing is consumed."""
        if timeout is None and self._state == _OPEN:
            return self._recv(max_bytes)
        return self._within(self._recv(max_bytes), timeout)

    @types.coroutine
    def _recv(self, max_bytes: int) -> Waits[bytes]:
        sslobj = self._sslobj
        incoming = self._incoming
        while True:
            if self._closed:
                raise _closed_error()
            if self._held is not None and max_bytes:
                return self._take_held(max_bytes)
            if self._read_eof:
                return b""
            if incoming.pending or sslobj.pending() or incoming.eof:
                try:
                    data = sslobj.read(max_bytes)
                except _ssl.SSLError as exc:
                    if self._read_result(exc):
                        return b""
                else:
                    if self._outgoing.pending:
                        yield from self._flush_for_reader()
                    if not data and max_bytes:
                        self._read_eof = True  # b"": the peer's close_notify
                    return data
            if self._unsent is not None or self._outgoing.pending or self._recv_lock.locked():
                yield from self._fill()
                continue
            # _fill's common case written out (one generator less per
            # read): nobody else reads, nothing of ours waits to go out.
            lock = self._recv_lock
            yield from lock.acquire()
            try:
                data = yield from self._transport.recv(_READ_SIZE)
            finally:
                lock.release()
            self._reads += 1
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()

    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Call[int]:
        """Read into ``buffer`` (up to ``nbytes``, 0 for its size); the
        count, 0 at the end. Waits like ``recv``."""
        view = memoryview(buffer).cast("B")
        if nbytes:
            if not 0 < nbytes <= len(view):
                raise ValueError(f"nbytes {nbytes} is outside a buffer of {len(view)} bytes")
            view = view[:nbytes]
        if timeout is None and self._state == _OPEN:
            return self._recv_into(view)
        return self._within(self._recv_into(view), timeout)

    @types.coroutine
    def _recv_into(self, view: memoryview) -> Waits[int]:
        if not len(view):
            return 0
        sslobj = self._sslobj
        incoming = self._incoming
        while True:
            if self._closed:
                raise _closed_error()
            if self._held is not None:
                return self._take_held_into(view)
            if self._read_eof:
                return 0
            if incoming.pending or sslobj.pending() or incoming.eof:
                try:
                    # With a buffer, read returns a count (typeshed says bytes).
                    n: int = sslobj.read(len(view), view)  # type: ignore[assignment]
                except _ssl.SSLError as exc:
                    if self._read_result(exc):
                        return 0
                else:
                    if self._outgoing.pending:
                        yield from self._flush_for_reader()
                    if not n:
                        self._read_eof = True
                    return n
            yield from self._fill()

    @types.coroutine
    def recv_exactly(self, nbytes: int, timeout: float | None = None) -> Waits[bytes]:
        """Exactly ``nbytes`` bytes, or EOFError if the stream ends first.
        ``timeout`` bounds the whole read; after an interruption the bytes
        read so far are consumed and lost."""
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        with _timeout(timeout):
            while got < nbytes:
                n = yield from self.recv_into(view[got:])
                if n == 0:
                    raise EOFError(f"stream ended after {got} of {nbytes} bytes")
                got += n
        return bytes(buf)

    # -- writing --------------------------------------------------------------------
    def _check_writable(self) -> None:
        self._check()
        if self._write_shut:
            raise BrokenPipeError(errno.EPIPE, "the TLS stream's write side is shut down (close_notify sent)")

    @types.coroutine
    def _write(self, data: Any) -> Waits[None]:
        """Encrypt and send ``data``: the caller holds ``_send_lock``, which
        is let go (and taken back) only while a write needs input."""
        sslobj = self._sslobj
        while True:
            try:
                sslobj.write(data)
                break
            except _ssl.SSLWantReadError:
                pass
            yield from self._flush_locked()
            self._release_send()
            try:
                yield from self._fill()
            finally:
                yield from self._send_lock.acquire()
            self._check()
        # _flush_locked's first round written out (one generator less per
        # write); the unsent rest is recorded before any wait.
        out = self._outgoing
        view = self._unsent = memoryview(out.read())
        n = yield from self._transport.send(view)
        self._unsent = view[n:] if n < len(view) else None
        if self._unsent is not None or out.pending:
            yield from self._flush_locked()

    def send(self, data: Any, timeout: float | None = None) -> Call[int]:
        """Encrypt and send some of ``data`` (up to 256 KiB), waiting until
        the transport took it; the count. The handshake first, if it is
        still to do. After a timeout or cancellation what was encrypted is
        committed: it is queued and goes out with the next write."""
        view = memoryview(data).cast("B")[:_WRITE_CHUNK]
        if timeout is None and self._state == _OPEN:
            return self._send(view)
        return self._within(self._send(view), timeout)

    @types.coroutine
    def _send(self, view: memoryview) -> Waits[int]:
        yield from self._send_lock.acquire()
        try:
            self._check_writable()
            if self._unsent is not None or self._outgoing.pending:
                yield from self._flush_locked()
            if len(view):
                yield from self._write(view)
        finally:
            self._release_send()
        return len(view)

    def sendall(self, data: Any, timeout: float | None = None) -> Call[None]:
        """Encrypt and send all of ``data``, returning once the transport
        took every byte. ``timeout`` bounds the whole call; after it (or a
        cancellation) a prefix of ``data`` was sent or is queued."""
        if timeout is None and self._state == _OPEN:
            return self._sendall(data)
        return self._within(self._sendall(data), timeout)

    @types.coroutine
    def _sendall(self, data: Any) -> Waits[None]:
        yield from self._send_lock.acquire()
        try:
            if self._closed or self._failure is not None or self._write_shut:
                self._check_writable()
            if self._unsent is not None or self._outgoing.pending:
                yield from self._flush_locked()
            if type(data) is bytes and len(data) <= _WRITE_CHUNK:
                if data:
                    yield from self._write(data)  # the usual response: no view needed
                return
            view = memoryview(data).cast("B")
            for start in range(0, len(view), _WRITE_CHUNK):
                yield from self._write(view[start:start + _WRITE_CHUNK])
        finally:
            self._release_send()

    @types.coroutine
    def sendfile(self, file: Any, offset: int = 0, count: int | None = None,
                 timeout: float | None = None) -> Waits[int]:
        """Send ``count`` bytes (to end of file if None) of ``file`` (an
        object with ``fileno()`` or an fd) from ``offset``: read and
        encrypt, there is no zero-copy path through TLS. Returns the bytes
        sent (fewer only at end of file). ``timeout`` bounds the whole call."""
        fd = file if isinstance(file, int) else file.fileno()
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        sent = 0
        with _timeout(timeout):
            while sent < count:
                chunk = os.pread(fd, min(count - sent, _WRITE_CHUNK), offset + sent)
                if not chunk:
                    break  # the file is shorter than asked
                yield from self.sendall(chunk)
                sent += len(chunk)
        return sent

    # -- closing -------------------------------------------------------------------
    def _send_now(self) -> bool:
        """Hand the unsent ciphertext and the outgoing BIO to the transport
        without waiting; True if it took all of it. The transport's
        ``write_without_interruption`` (the user-level stack) never loses
        any; otherwise one non-blocking ``send`` step is tried."""
        view = self._unsent
        pending = self._outgoing.read() if self._outgoing.pending else b""
        if view is not None:
            data = bytes(view) + pending
        else:
            data = pending
        self._unsent = None
        if not data:
            return True
        transport: Any = self._transport
        try:
            write = getattr(transport, "write_without_interruption", None)
            if write is not None:
                write(data)
                return True
            sent = 0
            while sent < len(data):
                n = _without_waiting(transport.send(memoryview(data)[sent:]))
                if n is None:
                    break
                sent += n
        except OSError:
            return True  # the transport is gone: nothing more can be sent
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]
            return False
        return True

    def _queue_close_notify(self) -> None:
        """Queue close_notify without losing input. CPython's
        ``SSLObject.unwrap`` calls ``SSL_shutdown`` a second time, which
        reads on and throws away application data: the rest of a record
        half read and the records waiting in the incoming BIO. So the
        record's rest is decrypted into ``_held`` first (reads take it
        before anything else) and the BIO's bytes are taken out around the
        call and put back. The incoming BIO has an EOF only when it is
        empty (the transport's end is written only after all was read), so
        putting back never follows an EOF."""
        self._write_shut = True
        sslobj, incoming = self._sslobj, self._incoming
        if sslobj.pending():
            held = sslobj.read(sslobj.pending())
            self._held = memoryview(bytes(self._held) + held) if self._held is not None else memoryview(held)
        waiting = incoming.read() if incoming.pending else b""
        try:
            sslobj.unwrap()
        except _ssl.SSLError:
            pass  # SSLWantReadError: sent, the peer's not yet read (what we want here)
        if waiting:
            incoming.write(waiting)

    def _take_held(self, max_bytes: int) -> bytes:
        held = self._held
        assert held is not None
        self._held = held[max_bytes:] if max_bytes < len(held) else None
        return bytes(held[:max_bytes])

    def _take_held_into(self, view: memoryview) -> int:
        held = self._held
        assert held is not None
        n = min(len(held), len(view))
        view[:n] = held[:n]
        self._held = held[n:] if n < len(held) else None
        return n

    def _shutdown_transport(self) -> None:
        try:
            self._transport.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close without waiting. ``SHUT_WR`` sends close_notify, then
        the transport's FIN, after anything still being written (if the
        transport cannot take it at once, a thread finishes it); later
        writes raise BrokenPipeError, reads go on until the peer's
        close_notify. ``SHUT_RD`` is passed to the transport; ``SHUT_RDWR``
        does both. Before the handshake, ``SHUT_WR`` only shuts the transport."""
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"shutdown how must be socket.SHUT_RD, SHUT_WR or SHUT_RDWR, got {how!r}")
        if self._closed:
            raise _closed_error()
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            try:
                self._transport.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        if how == socket.SHUT_RD or self._write_shut:
            return
        if self._state != _OPEN:
            self._write_shut = True
            self._shutdown_transport()
            return
        if self._send_lock.locked():
            self._write_shut = True    # no new write; the one at work finishes,
            self._shut_pending = True  # then sends close_notify and the FIN
            return
        self._queue_close_notify()
        self._after_close_notify(self._send_now())

    def _after_close_notify(self, sent: bool) -> None:
        """close_notify is queued (and ``sent`` says whether the transport
        took it at once): the FIN now, or after a thread has sent the rest."""
        if sent:
            self._shutdown_transport()
            return
        sched = current_scheduler()
        if sched is not None:
            sched.spawn(self._finish_shutdown(), "tls-shutdown")

    @types.coroutine
    def _finish_shutdown(self) -> Waits[None]:
        try:
            yield from self._flush()
        except (OSError, TimeoutError):
            return  # the stream was closed or failed meanwhile: nothing left to shut
        self._shutdown_transport()

    def close(self) -> None:
        """Close now, never waiting: close_notify goes out if the transport
        takes it at once (else a thread goes on sending until the peer has
        taken nothing for ``CLOSE_LINGER`` seconds, then closes the
        transport; readers are woken at once),
        then the transport is closed. Threads waiting on the stream get
        OSError(EBADF) or the transport's error."""
        if self._closed:
            return
        self._closed = True
        if self._state != _OPEN or self._send_lock.locked():
            # No handshake, or a writer is mid-record: a close_notify now
            # would claim a clean end the data does not have.
            self._transport.close()
            return
        if not self._write_shut:
            self._queue_close_notify()
        sched = current_scheduler()
        if self._send_now() or sched is None:
            _close_keeping_output(self._transport)
            return
        try:
            self._transport.shutdown(socket.SHUT_RD)  # wakes a reader blocked in the transport
        except OSError:
            pass
        sched.spawn(self._linger(), "tls-close")

    @types.coroutine
    def _linger(self) -> Waits[None]:
        # A peer that reads, however slowly (a busy machine), gets the rest
        # and close_notify; one that takes nothing for CLOSE_LINGER seconds
        # is cut off.
        lock = self._send_lock
        try:
            yield from lock.acquire()  # free (close checked): taken at once, for the rule's sake
            try:
                yield from self._flush_locked(stall=CLOSE_LINGER)
            finally:
                lock.release()
        except (OSError, TimeoutError):
            pass  # the peer does not read: it gets the FIN without close_notify
        finally:
            _close_keeping_output(self._transport)

    @types.coroutine
    def unwrap(self, timeout: float | None = None) -> Waits[tuple[Stream, bytes]]:
        """End TLS but not the connection: send close_notify, wait for the
        peer's, and return ``(transport, trailing)``, where ``trailing``
        is what the peer sent in the clear after its close_notify (already
        read from the transport). The TLS stream is closed afterwards; the
        transport is the caller's. (Through ``threadlib.frontends.green``'s
        ``wrap``, whose ``unwrap`` gives the wrapped object back, call
        ``green.call(stream.unwrap())``.)"""
        sslobj = self._sslobj
        with _timeout(timeout):
            if self._state != _OPEN:
                yield from self._handshake()
            yield from self._send_lock.acquire()
            try:
                self._check()
                if not self._write_shut:
                    self._queue_close_notify()
                yield from self._flush_locked()
            finally:
                self._release_send()
            while True:
                self._check()
                try:
                    sslobj.unwrap()
                    break
                except _ssl.SSLWantReadError:
                    pass
                except _ssl.SSLEOFError:
                    if not self._ragged_eof:
                        raise
                    break
                if self._outgoing.pending:
                    yield from self._flush()
                yield from self._fill()
        self._closed = True
        trailing = self._incoming.read()
        return self._transport, trailing


def _close_keeping_output(transport: Any) -> None:
    """Close ``transport`` after dropping the input it holds unread (a TLS
    1.3 server's session tickets to a client that never read, say): a
    kernel socket closed with unread input is reset, and the reset throws
    away what the kernel had not yet sent, close_notify included."""
    try:
        for _ in range(64):  # bounded: a peer that keeps sending is not waited for
            data = _without_waiting(transport.recv(65536))
            if data is None:
                # A stream may wait instead of trying right after a short
                # read (sockio's shortcut); the second call tries.
                data = _without_waiting(transport.recv(65536))
            if not data:
                break
    except OSError:
        pass
    transport.close()


def _without_waiting(call: Any) -> Any:
    """One step of a transport call (``send``/``recv``): its result if it
    completes without waiting, None if it would wait (the call is then
    abandoned, which the contract says sends or consumes nothing)."""
    steps = iter(call)
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    return None


@types.coroutine
def wrap(transport: Stream, context: _ssl.SSLContext, *, server_side: bool = False,
         server_hostname: str | None = None, handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
         ragged_eof: bool = False) -> Waits[TlsStream]:
    """A ``TlsStream`` over ``transport`` with its handshake done.
    ``server_hostname`` (clients) is the name sent by SNI and checked
    against the certificate when ``context.check_hostname`` is on. On any
    failure or interruption the transport is closed."""
    stream = TlsStream(transport, context, server_side=server_side, server_hostname=server_hostname,
                       handshake_timeout=handshake_timeout, ragged_eof=ragged_eof)
    try:
        yield from stream.do_handshake()
    except BaseException:
        stream.close()
        raise
    return stream


class TlsListener:
    """A ``threadlib.net.Listener`` whose ``accept`` gives ``TlsStream``s.

    ``accept`` returns as soon as the transport's does: the handshake runs
    lazily, at the accepted stream's first read or write, in the thread
    that serves the connection. So a slow or silent client costs its own
    thread ``handshake_timeout`` seconds at most and never holds up the
    accept loop, and handshakes run concurrently (as trio's SSLListener).
    """

    __slots__ = ("_listener", "_context", "_handshake_timeout", "_ragged_eof")

    def __init__(self, listener: Listener, context: _ssl.SSLContext, *,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT, ragged_eof: bool = False) -> None:
        self._listener = listener
        self._context = _prepare(context)
        self._handshake_timeout = handshake_timeout
        self._ragged_eof = ragged_eof

    @property
    def listener(self) -> Listener:
        """The transport's listener."""
        return self._listener

    @property
    def context(self) -> _ssl.SSLContext:
        """The server-side SSLContext of every accepted stream."""
        return self._context

    @property
    def address(self) -> Address:
        """The bound address."""
        return self._listener.address

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._listener.closed

    @types.coroutine
    def accept(self, timeout: float | None = None) -> Waits[tuple[TlsStream, Address]]:
        """The next connection, as a ``TlsStream`` not yet handshaken, and
        its peer address. Waits like the transport's ``accept``."""
        stream, peer = yield from self._listener.accept(timeout)
        return TlsStream(stream, self._context, server_side=True, handshake_timeout=self._handshake_timeout,
                         ragged_eof=self._ragged_eof), peer

    def close(self) -> None:
        """Stop listening (the transport's listener)."""
        self._listener.close()

    def __enter__(self) -> TlsListener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TlsListener {self._listener!r}>"


@types.coroutine
def connect_over(connect: Any, address: Any, timeout: float | None, context: _ssl.SSLContext,
                 server_hostname: str | None, **options: Any) -> Waits[TlsStream]:
    """``connect(address, **options)`` and a TLS handshake over it, both
    within ``timeout``; the name checked defaults to the host connected to.
    (How every network's ``connect(..., ssl=context)`` is made.)"""
    if server_hostname is None:
        server_hostname = address[0]
    with _timeout(timeout):
        stream = yield from connect(address, **options)
        return (yield from wrap(stream, context, server_hostname=server_hostname))


class TlsNetwork:
    """TLS on any network, as a ``threadlib.net.Network``: ``listen``
    gives ``TlsListener``s with ``server_context``, ``connect`` handshakes
    with ``client_context``. A server written against ``Network`` serves
    TLS unchanged when handed one. ``ssl=`` on a call overrides the context."""

    def __init__(self, network: Network, server_context: _ssl.SSLContext | None = None,
                 client_context: _ssl.SSLContext | None = None, *,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT, ragged_eof: bool = False) -> None:
        self.network = network
        self.name = f"{network.name}+tls"
        self.server_context = server_context
        self.client_context = client_context
        self.handshake_timeout = handshake_timeout
        self.ragged_eof = ragged_eof

    def resolve(self, host: str, port: int) -> Call[list[tuple[int, Any]]]:
        """The inner network's ``resolve``."""
        return self.network.resolve(host, port)

    @types.coroutine
    def listen(self, address: Address, backlog: int = 1024, reuse_port: bool = False, nodelay: bool = True,
               ssl: _ssl.SSLContext | None = None) -> Waits[TlsListener]:
        """A ``TlsListener`` over the inner network's listener."""
        context = ssl or self.server_context
        if context is None:
            raise ValueError("TlsNetwork.listen needs a server context (server_context= or ssl=)")
        listener = yield from self.network.listen(address, backlog, reuse_port, nodelay)
        return TlsListener(listener, context, handshake_timeout=self.handshake_timeout,
                           ragged_eof=self.ragged_eof)

    @types.coroutine
    def connect(self, address: Address, timeout: float | None = None, nodelay: bool = True, local: Any = None,
                ssl: _ssl.SSLContext | None = None, server_hostname: str | None = None) -> Waits[TlsStream]:
        """A handshaken ``TlsStream`` to ``address`` (``server_hostname``
        defaults to its host); ``timeout`` bounds connect and handshake."""
        context = ssl or self.client_context
        if context is None:
            raise ValueError("TlsNetwork.connect needs a client context (client_context= or ssl=)")
        return (yield from connect_over(self.network.connect, address, timeout, context, server_hostname,
                                        nodelay=nodelay, local=local))

    def __repr__(self) -> str:
        return f"<TlsNetwork over {self.network!r}>"
