"""The stack's packet-level tests (smoltcp-style: exact segments in, exact
replies out) share ``testkit``: a Harness that feeds one Stack segments and
checks every field of what it sends back.

The testkit's checks are plain ``assert`` statements; registering it for
pytest's assertion rewriting makes a mismatching segment fail with both
segments printed field by field instead of a bare AssertionError."""

import pytest

pytest.register_assert_rewrite("tests.iolib.tcp.testkit")
