"""The Internet checksum (RFC 1071) for IPv4 headers, ICMP and TCP.

The one's-complement sum of 16-bit big-endian words equals the whole buffer
read as one big-endian integer reduced modulo 0xFFFF (because 2**16 = 1 mod
0xFFFF).  `int.from_bytes` plus one modulo runs in C and is several times
faster than unpacking words with `struct`.  Partial sums can be added before
the final reduction, so a pseudo-header never has to be concatenated to a
payload.  This module must never allocate copies of payloads.
"""

_FOLD = 0xFFFF


def partial_sum(data) -> int:
    """An unreduced partial sum of `data`, which must start on an even offset
    of the checksummed region.  An odd tail counts as padded with one zero."""
    s = int.from_bytes(data, "big")
    if len(data) & 1:
        s <<= 8
    return s


def finish(total: int) -> int:
    """The checksum field value for a region whose partial sums add to `total`.

    Never 0: a zero sum is written as 0xFFFF, its one's-complement twin, which
    every receiver accepts (and UDP requires).
    """
    return _FOLD - (total % _FOLD)


def checksum(data, initial: int = 0) -> int:
    """The checksum to store for `data` (with its checksum field zeroed)."""
    return finish(partial_sum(data) + initial)


def verify(data, initial: int = 0) -> bool:
    """True when `data` (checksum field included) sums to zero."""
    return (partial_sum(data) + initial) % _FOLD == 0

