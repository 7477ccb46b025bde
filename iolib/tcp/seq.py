"""Sequence-number arithmetic modulo 2**32 (RFC 9293 §3.4).

TCP sequence numbers and timestamps live in a 32-bit circular space: "a < b"
means "b is less than 2**31 ahead of a".  Inside the stack a connection keeps
*unwrapped* sequence numbers (plain, ever-growing Python ints anchored at the
initial sequence number), so its comparisons are ordinary integer
comparisons; numbers are wrapped only on the wire (`wrap`) and unwrapped on
arrival against a nearby reference (`unwrap`).  This module must never hold
state.
"""

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def wrap(n: int) -> int:
    """The 32-bit wire value of an unwrapped sequence number."""
    return n & MASK


def unwrap(wire: int, reference: int) -> int:
    """The unwrapped number nearest to `reference` whose wire value is `wire`.

    Valid when the true value is within 2**31 of the reference, which RFC 9293
    guarantees for any segment worth looking at (windows are < 2**30).
    """
    d = (wire - reference) & MASK
    if d >= HALF:
        d -= MOD
    return reference + d


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed distance in the circular 32-bit space."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def seq_lt(a: int, b: int) -> bool:
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    return seq_diff(a, b) >= 0


def seq_add(a: int, n: int) -> int:
    return (a + n) & MASK
