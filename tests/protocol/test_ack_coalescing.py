"""Acks queued in a row coalesce into one `multiple` ack, and never cover an unsettled tag."""

from __future__ import annotations

from pamqp import commands

from tests.protocol.frames import F, connected


def _ack(ch: int, tag: int, multiple: bool = False) -> bytes:
    return F.method(ch, commands.Basic.Ack(tag, multiple))


def test_acks_in_order_become_one_multiple_ack_per_write() -> None:
    conn, ch = connected()
    for tag in range(1, 101):
        assert conn.ack(ch, tag)
    assert conn.data_to_send() == _ack(ch, 100, multiple=True)
    for tag in range(101, 104):  # a new write: the run goes on from what was sent
        assert conn.ack(ch, tag)
    assert conn.data_to_send() == _ack(ch, 103, multiple=True)


def test_the_first_ack_after_a_gap_is_single_and_the_gap_blocks_coalescing() -> None:
    conn, ch = connected()
    conn.ack(ch, 1)
    conn.ack(ch, 3)  # 2 is still with the user: a multiple ack would settle it too
    conn.ack(ch, 4)
    assert conn.data_to_send() == _ack(ch, 1) + _ack(ch, 3) + _ack(ch, 4)
    conn.ack(ch, 2)  # the gap closes: everything up to 4 is settled
    conn.ack(ch, 5)
    assert conn.data_to_send() == _ack(ch, 2) + _ack(ch, 5)  # 5 follows a non-contiguous ack
    conn.ack(ch, 6)
    assert conn.data_to_send() == _ack(ch, 6)  # coalesces with nothing queued before it
    conn.ack(ch, 7)
    conn.ack(ch, 8)
    assert conn.data_to_send() == _ack(ch, 8, multiple=True)


def test_nacks_rejects_and_other_frames_are_never_reordered_or_absorbed() -> None:
    conn, ch = connected()
    conn.ack(ch, 1)
    conn.nack(ch, 2, requeue=True)
    conn.ack(ch, 3)
    conn.ack(ch, 4)
    conn.reject(ch, 5, requeue=False)
    conn.publish(ch, b"\x00", b"\x05reply", b"body", b"\x00\x00")  # e.g. an RPC reply...
    conn.ack(ch, 6)  # ...and its request's ack: must stay behind the reply
    expected = (
        _ack(ch, 1)
        + F.method(ch, commands.Basic.Nack(2, False, True))
        + _ack(ch, 4, multiple=True)
        + F.method(ch, commands.Basic.Reject(5, False))
        + F.content(ch, commands.Basic.Publish(routing_key="reply"), b"body")
        + _ack(ch, 6)
    )
    assert conn.data_to_send() == expected


def test_acks_on_two_channels_coalesce_separately() -> None:
    conn, ch = connected()
    other = conn.open_channel()
    conn.receive_data(F.method(other, commands.Channel.OpenOk()))
    conn.data_to_send()
    conn.ack(ch, 1)
    conn.ack(other, 1)
    conn.ack(ch, 2)  # the last frame queued is the other channel's: no coalescing
    conn.ack(other, 2)
    conn.ack(other, 3)
    assert conn.data_to_send() == (
        _ack(ch, 1) + _ack(other, 1) + _ack(ch, 2) + _ack(other, 3, multiple=True)
    )


def test_a_message_held_forever_stops_the_tracking_instead_of_growing_it() -> None:
    conn, ch = connected()
    for tag in range(2, 10_003):  # tag 1 is never settled
        conn.ack(ch, tag)
    sent = conn.data_to_send()
    assert len(sent) == 10_001 * 21  # one 21-byte frame each: nothing coalesced past the gap
    channel = conn._channels[ch]
    assert channel.settled_above is None  # given up, not 10,001 entries kept
    conn.ack(ch, 1)
    conn.ack(ch, 10_003)
    assert conn.data_to_send() == _ack(ch, 1) + _ack(ch, 10_003)


def test_a_multiple_ack_from_the_caller_settles_everything_below() -> None:
    conn, ch = connected()
    conn.ack(ch, 5, multiple=True)
    conn.ack(ch, 6)
    conn.ack(ch, 7)
    assert conn.data_to_send() == _ack(ch, 7, multiple=True)
