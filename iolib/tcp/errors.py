"""Exceptions of the user-level TCP/IP stack.

Each subclasses the matching Python built-in, so callers that already catch
`ConnectionResetError` or `OSError` keep working.  This module must never
import anything from the rest of the stack.
"""


class TcpError(OSError):
    """Base class of every error the stack raises."""


class NetUnreachable(TcpError):
    """No local address of the right family / prefix can reach the peer."""


class ConnectionRefused(TcpError, ConnectionRefusedError):
    """The peer answered our SYN with a RST (RFC 9293 §3.10.7.3)."""


class ConnectionReset(TcpError, ConnectionResetError):
    """The peer reset an established connection."""


class ConnectionAborted(TcpError, ConnectionAbortedError):
    """We aborted the connection (abort(), or close() with unread data)."""


class ConnectionTimedOut(TcpError, TimeoutError):
    """The user timeout expired with data unacknowledged (RFC 9293 §3.8.3),
    or keep-alive probes went unanswered (RFC 1122 §4.2.3.6)."""


class HostUnreachable(TcpError):
    """An ICMP hard error (protocol/port unreachable) ended the connection."""


class AddressInUse(TcpError):
    """The requested local port (or every ephemeral port) is taken."""


class InvalidState(TcpError):
    """The call is not allowed in the connection's current state
    (e.g. send after shutdown of the write side)."""


class BadArgument(TcpError, ValueError):
    """An argument the caller passed is malformed."""
