"""Per-connection tunables and their validation.

A `ConnOptions` is plain data copied into each connection from the stack's
defaults (or a listener's); `set_options` changes it with checks that name
the bad field.  This module must never look at connection state.
"""

from __future__ import annotations

from .errors import BadArgument

_FIELDS = {
    # name: (default, type, minimum)
    "nodelay": (False, bool, None),          # Nagle off (RFC 9293 §3.7.4)
    "keepalive": (False, bool, None),        # RFC 1122 §4.2.3.6: off by default
    "keepidle": (7200.0, float, 0.001),      # idle seconds before the first probe
    "keepintvl": (75.0, float, 0.001),
    "keepcnt": (9, int, 1),
    "user_timeout": (300.0, float, 0.001),   # RFC 9293 §3.8.3 (5 minutes)
    "sndbuf": (262144, int, 1),
    "rcvbuf": (262144, int, 256),
    "sack": (True, bool, None),              # RFC 2018
    "timestamps": (True, bool, None),        # RFC 7323
    "window_scaling": (True, bool, None),    # RFC 7323
    "ack_delay": (0.04, float, 0.0),         # <= 0.2 s (brief), RFC 9293 §3.8.6.3 <= 0.5 s
    "min_rto": (1.0, float, 0.001),          # RFC 6298 (2.4): SHOULD be 1 s
    "max_rto": (60.0, float, 0.001),         # RFC 6298 (2.5)
    "initial_rto": (1.0, float, 0.001),      # RFC 6298 (2.1)
    "msl": (30.0, float, 0.0),               # TIME-WAIT lasts 2*msl
    "fin_wait2_timeout": (60.0, float, 0.0), # only for connections the user closed
    "initial_window": (0, int, 0),           # segments; 0 = RFC 5681 §3.1 formula
}


class ConnOptions:
    __slots__ = tuple(_FIELDS)

    def __init__(self, **kw):
        for name, (default, _t, _m) in _FIELDS.items():
            setattr(self, name, default)
        self.update(**kw)

    def update(self, **kw) -> None:
        """Set the given options; a bad one raises `BadArgument` naming it
        and leaves every option as it was (nothing is half-applied)."""
        checked = {}
        for name, value in kw.items():
            if name not in _FIELDS:
                raise BadArgument(f"unknown TCP option {name!r}; known: {', '.join(_FIELDS)}")
            _default, typ, minimum = _FIELDS[name]
            if typ is bool:
                if not isinstance(value, bool):
                    raise BadArgument(f"TCP option {name} must be a bool, got {value!r}")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise BadArgument(f"TCP option {name} must be a number, got {value!r}")
                if typ is int and value != int(value):
                    raise BadArgument(f"TCP option {name} must be an integer, got {value!r}")
                value = typ(value)
                if value != value:
                    raise BadArgument(f"TCP option {name} must be a number, got {value!r}")
                if minimum is not None and value < minimum:
                    raise BadArgument(f"TCP option {name} must be >= {minimum}, got {value!r}")
            checked[name] = value
        if checked.get("ack_delay", 0) > 0.5:
            raise BadArgument("TCP option ack_delay must be <= 0.5 s (RFC 9293 §3.8.6.3), "
                              f"got {checked['ack_delay']!r}")
        for name, value in checked.items():
            setattr(self, name, value)

    def copy(self) -> "ConnOptions":
        new = ConnOptions.__new__(ConnOptions)
        for name in _FIELDS:
            setattr(new, name, getattr(self, name))
        return new

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    def __repr__(self) -> str:
        return f"ConnOptions({self.as_dict()!r})"
