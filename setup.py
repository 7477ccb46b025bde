"""The optional compiled run loop (threadlib/_kernel/_speedups.c).

Everything else about the package is in pyproject.toml. The extension is
optional: without a C compiler or Python's headers the build says so and
installs the pure-Python package, which behaves the same (scheduler.py is
the specification the C loop follows)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("threadlib._kernel._speedups", ["threadlib/_kernel/_speedups.c"],
                             optional=True)])
