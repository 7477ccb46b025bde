"""threadlib's programs: the web server, the load generator, the proxy, the
echo server and the handler-style framework. From a checkout they run as
``python -m apps.NAME``; installed, they are the package ``threadlib.apps``
and the console scripts ``threadlib-NAME``."""

from __future__ import annotations

import argparse
import math
import os
import ssl
import sys

from threadlib.process.multicore import WorkerStartError


def program_name(name: str) -> str:
    """How the user started program ``name``, for usage lines and errors:
    ``threadlib-NAME`` as a console script, ``python -m apps.NAME`` else."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    return invoked if invoked.startswith("threadlib-") else f"python -m apps.{name}"


def positive_seconds(text: str) -> float:
    """An argparse ``type`` for timeouts: a finite number of seconds above
    zero (a zero or negative timeout would fire at once, or never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def positive_count(text: str) -> int:
    """An argparse ``type`` for sizes and counts: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number above zero")
    return value


def cannot_start(program: str, exc: BaseException) -> WorkerStartError:
    """The one-line ``WorkerStartError`` for a program whose listener could
    not open: the reason (``cannot listen on HOST:PORT: Address already in
    use``, or the host name that does not resolve) after the program's name."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    return WorkerStartError(f"{program_name(program)}: {reason}")


IO_BACKENDS = ("epoll", "uring")
IO_BACKEND_HELP = ("the kernel interface for socket and file IO: epoll (readiness), or io_uring where the kernel "
                   "allows it (else epoll, with one log line saying why); default: $THREADLIB_IO or epoll")


def add_io_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--io epoll|uring``: the IO backend of the program's schedulers
    (argparse names a bad value in its one-line error)."""
    parser.add_argument("--io", choices=IO_BACKENDS, default=None, help=IO_BACKEND_HELP)


def io_backend_of(parser: argparse.ArgumentParser, choice: str | None) -> str:
    """The backend the program's schedulers will use for ``--io CHOICE``
    (None: ``$THREADLIB_IO``): ``uring`` falls back to ``epoll`` here,
    once, with the log line saying why, so N forked workers do not each
    say it. A bad ``$THREADLIB_IO`` is the parser's one-line error. Call
    it after logging is set up."""
    from threadlib.lowlevel import usable_io_backend

    try:
        return usable_io_backend(choice)
    except ValueError as exc:
        parser.error(str(exc))


def summary(doc: str | None) -> str:
    """A module docstring's first paragraph, on one line."""
    return " ".join((doc or "").split("\n\n")[0].split())


def tls_server_context(cert_file: str, key_file: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server-side TLS context (``--tls-cert``/``--tls-key`` of the
    programs): the PEM certificate chain in ``cert_file`` and its key in
    ``key_file``, TLS 1.2 or 1.3, ``alpn`` offered if given. Raises
    ValueError naming the file that is wrong, for a one-line CLI error."""
    for option, path, marker in (("--tls-cert", cert_file, "CERTIFICATE-----"),
                                 ("--tls-key", key_file, "PRIVATE KEY-----")):
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ValueError(f"{option} {path}: {exc.strerror}") from None
        if marker.encode() not in text:
            what = "certificate" if option == "--tls-cert" else "private key"
            raise ValueError(f"{option} {path}: no PEM {what} in it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--tls-key {key_file} is not the key of the certificate in --tls-cert {cert_file}") \
                from None
        raise ValueError(f"--tls-cert {cert_file} / --tls-key {key_file}: cannot load: "
                         f"{(exc.reason or str(exc)).lower().replace('_', ' ')}") from None
    return context
