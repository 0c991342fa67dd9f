"""The daemon's own socket calls on the request path (below pyzmq's sugar layer)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zmq

from edged.server.daemon import _recv_message, _send_message, _waiting

_names = itertools.count()


@pytest.fixture
def pair():
    """A ROUTER (the daemon's side) and a DEALER (a client) joined over inproc://."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    endpoint = f"inproc://socket-io-{next(_names)}"
    router.bind(endpoint)
    dealer.connect(endpoint)
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def test_a_whole_message_is_read_zero_copy_and_only_when_one_waits(pair):
    router, dealer = pair
    assert not _waiting(router)
    with pytest.raises(zmq.Again):
        _recv_message(router)
    dealer.send_multipart([b"header", b"x" * 100_000, b""])
    assert router.poll(5000)
    assert _waiting(router)
    frames = _recv_message(router)
    assert [f.bytes for f in frames[1:]] == [b"header", b"x" * 100_000, b""]
    assert all(isinstance(f, zmq.Frame) for f in frames) and not _waiting(router)


def test_a_reply_goes_out_as_one_message_with_arrays_and_frames(pair):
    router, dealer = pair
    dealer.send(b"hello")
    assert router.poll(5000)
    envelope = _recv_message(router)[:1]
    out = np.arange(1000, dtype=np.float32)
    _send_message(router, [*envelope, b'{"ok":true}', out, memoryview(b"tail")])
    assert dealer.poll(5000)
    got = dealer.recv_multipart()
    assert got[0] == b'{"ok":true}' and got[1] == out.tobytes() and got[2] == b"tail"


def test_a_part_that_is_no_buffer_fails_before_any_part_leaves(pair):
    router, dealer = pair
    dealer.send(b"hello")
    assert router.poll(5000)
    envelope = _recv_message(router)[:1]
    with pytest.raises(TypeError):
        _send_message(router, [*envelope, b"header", object()])
    # Nothing half-sent is left to glue itself onto the next reply.
    _send_message(router, [*envelope, b"next"])
    assert dealer.poll(5000) and dealer.recv_multipart() == [b"next"]


def test_a_part_that_fails_after_others_left_ends_that_message_so_the_next_reply_stands_alone(pair):
    router, dealer = pair
    dealer.send(b"hello")
    assert router.poll(5000)
    envelope = _recv_message(router)[:1]
    strided = np.arange(10, dtype=np.float32)[::2]  # a buffer, but not one ZeroMQ can send
    with pytest.raises((BufferError, ValueError)):
        _send_message(router, [*envelope, b"header", strided])
    _send_message(router, [*envelope, b"next"])
    assert dealer.poll(5000) and dealer.recv_multipart() == [b"header", b""]  # cut short, not glued on
    assert dealer.poll(5000) and dealer.recv_multipart() == [b"next"]
