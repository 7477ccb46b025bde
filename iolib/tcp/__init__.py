"""iolib.tcp: a sans-IO TCP/IP stack (IPv4, IPv6, ICMP echo/errors, TCP per
RFC 9293 with RFC 7323, 2018, 6298, 5681, 6582, 5961, 6528).

Start with `Stack`; see docs/tcp-conformance.md for the API contract and
which requirement each test covers.  Nothing here reads a clock, a device or
a global random source, and nothing here ever blocks.
"""

from .connection import (CLOSE_WAIT, CLOSED, CLOSING, ESTABLISHED, EV_ACCEPT, EV_CLOSED,
                         EV_CONNECTED, EV_EOF, EV_ERROR, EV_READABLE, EV_REFUSED, EV_RESET,
                         EV_URGENT, EV_WRITABLE, FIN_WAIT_1, FIN_WAIT_2, LAST_ACK, LISTEN, SYN_RECEIVED,
                         SYN_SENT, TIME_WAIT, Connection)
from .errors import (AddressInUse, BadArgument, ConnectionAborted, ConnectionRefused,
                     ConnectionReset, ConnectionTimedOut, HostUnreachable, InvalidState,
                     NetUnreachable, TcpError)
from .options import ConnOptions
from .stack import Listener, Stack, Stats

__all__ = [
    "Stack", "Listener", "Connection", "ConnOptions", "Stats",
    "TcpError", "NetUnreachable", "ConnectionRefused", "ConnectionReset", "ConnectionAborted",
    "ConnectionTimedOut", "HostUnreachable", "AddressInUse", "InvalidState", "BadArgument",
    "EV_READABLE", "EV_WRITABLE", "EV_ACCEPT", "EV_CONNECTED", "EV_REFUSED", "EV_RESET",
    "EV_EOF", "EV_ERROR", "EV_CLOSED", "EV_URGENT",
    "CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
    "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT",
]
