"""Unit tests of the sans-IO core: no event loop, no sockets, no broker."""

import pytest

# frames.py asserts every byte the client sends during the handshake; rewrite
# its asserts so a mismatch shows both sides.
pytest.register_assert_rewrite("tests.protocol.frames")
