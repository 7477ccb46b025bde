"""The Internet checksum (RFC 1071) for IPv4 headers, ICMP and TCP.

The one's-complement sum of 16-bit big-endian words equals the whole buffer
read as one big-endian integer reduced modulo 0xFFFF (because 2**16 = 1 mod
0xFFFF).  `int.from_bytes` plus one modulo runs in C and is several times
faster than unpacking words with `struct`.  Partial sums can be added before
the final reduction, so a pseudo-header never has to be concatenated to a
payload.  This module must never allocate copies of payloads.

`ones_sum` is the reduced sum of a region, for the per-packet paths: the
compiled helper (iolib/_checksum.c, built at install when a C compiler is
present) when it is there and ``THREADLIB_PURE`` is unset, else the
pure-Python `_ones_sum` here, which it must match (`COMPILED` says which).
"""

from __future__ import annotations

import os
from typing import Any, Callable

_FOLD = 0xFFFF


def _ones_sum(data: Any, start: int = 0, end: int | None = None) -> int:
    """The sum of ``data[start:end]`` as big-endian 16-bit words (an odd
    tail padded with a zero byte), modulo 0xFFFF: in [0, 0xFFFE].
    ``start`` must be an even offset of the checksummed region."""
    n = len(data)
    if end is None:
        end = n
    if not 0 <= start <= end <= n:
        raise ValueError(f"ones_sum(): region [{start}:{end}] is not within the {n}-byte buffer")
    if start or end != n:
        data = memoryview(data)[start:end]
    s = int.from_bytes(data, "big")
    if (end - start) & 1:
        s <<= 8
    return s % _FOLD


def _load() -> Callable[..., int] | None:
    if os.environ.get("THREADLIB_PURE", "") not in ("", "0"):
        return None
    try:
        from .. import _checksum  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _checksum.ones_sum  # type: ignore[no-any-return]


_compiled = _load()
COMPILED: bool = _compiled is not None
ones_sum: Callable[..., int] = _compiled if _compiled is not None else _ones_sum


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
    return finish(ones_sum(data) + initial)


def verify(data, initial: int = 0) -> bool:
    """True when `data` (checksum field included) sums to zero."""
    return (ones_sum(data) + initial) % _FOLD == 0

