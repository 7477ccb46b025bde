"""The optional compiled parts: the run loop (threadlib/_kernel/_speedups.c),
the Internet checksum's sum and the stack's IPv4/TCP fast parse (iolib/_checksum.c) and the io_uring ring
(threadlib/_kernel/_uring.c, Linux only).

Everything else about the package is in pyproject.toml. The extensions are
optional: without a C compiler or Python's headers the build says so and
installs the pure-Python package, which behaves the same (scheduler.py is
the specification the C loop follows, iolib/tcp/checksum.py the C sum's, iolib/tcp/segment.py's _parse_tcp4 the C parse's);
without _uring, `uring_workers()` falls back to epoll and says why. _uring needs linux/io_uring.h (Debian's
linux-libc-dev), not liburing."""

import sys

from setuptools import Extension, setup

extensions = [Extension("threadlib._kernel._speedups", ["threadlib/_kernel/_speedups.c", "threadlib/_kernel/_green.c",
                                                       "threadlib/_kernel/_loop.c"],
                        depends=["threadlib/_kernel/_speedups.h"], optional=True),
              Extension("iolib._checksum", ["iolib/_checksum.c"], optional=True)]
if sys.platform.startswith("linux"):
    extensions.append(Extension("threadlib._kernel._uring", ["threadlib/_kernel/_uring.c"], optional=True))
setup(ext_modules=extensions)
