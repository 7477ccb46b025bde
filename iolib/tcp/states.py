"""Connection states (RFC 9293 §3.3.2) and the events a connection reports.

These names are re-exported by connection.py and iolib.tcp, which is where
users take them from; they live in a module of their own because every
part of a connection (output.py, receive.py, timers.py, the loss-recovery
modules) tests the state, and those modules must not import connection.py,
which is built from them.  Only constants here: nothing may be added that
holds or computes state.
"""

CLOSED = "CLOSED"
LISTEN = "LISTEN"
SYN_SENT = "SYN-SENT"
SYN_RECEIVED = "SYN-RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN-WAIT-1"
FIN_WAIT_2 = "FIN-WAIT-2"
CLOSE_WAIT = "CLOSE-WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST-ACK"
TIME_WAIT = "TIME-WAIT"

# Events, as (handle, kind) pairs in stack.take_events().
EV_READABLE = "readable"      # data (or EOF, or an error) can be read now
EV_WRITABLE = "writable"      # send() will accept bytes again
EV_ACCEPT = "accept"          # (listener) accept() will return a connection
EV_CONNECTED = "connected"    # active open completed
EV_REFUSED = "refused"        # RST answered our SYN
EV_RESET = "reset"            # peer reset a synchronized connection
EV_EOF = "eof"                # peer's FIN arrived: reads end after buffered data
EV_ERROR = "error"            # conn.error is set (user timeout, ICMP hard error)
EV_CLOSED = "closed"          # connection reached CLOSED and left the stack
EV_URGENT = "urgent"          # the peer marked urgent data (conn.urgent_pending)

# States in which we may send data / a FIN.
SENDING = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
# States in which arriving text is delivered (RFC 9293 §3.10.7.4 seventh).
RECEIVING = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
SYNCHRONIZED = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT,
                          CLOSING, LAST_ACK, TIME_WAIT))
