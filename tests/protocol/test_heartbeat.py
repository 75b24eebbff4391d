"""Heartbeats on a fake clock: the core never reads time, so tests pass floats in."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from pamqp import commands

from leveret.protocol import AMQPConnection, HeartbeatTimedOut
from leveret.protocol._codec import EMPTY_PROPERTIES_BYTES
from tests.protocol.frames import F, handshake, open_channel

HB = 60  # negotiated interval, seconds
T0 = 1000.0  # the driver's clock when the timer starts
HEARTBEAT_FRAME = F.heartbeat()


def started() -> AMQPConnection:
    """An open connection (heartbeat 60 s) whose timer started at T0."""
    conn = handshake(
        AMQPConnection(),
        tune=(2047, 131072, HB),
        expect_tune_ok=(2047, 131072, HB),
    )
    assert conn.next_deadline() == 0.0  # "run me now"
    assert conn.handle_timer(T0) == []
    assert conn.data_to_send() == b""
    return conn


def follow(
    conn: AMQPConnection, until: float, between: Callable[[float], None] = lambda now: None
) -> list[tuple[float, list[object], bytes]]:
    """Call handle_timer at every next_deadline() up to `until`, as a driver would.

    `between(now)` runs after each tick (feed input or queue output there).
    Returns (time, events, bytes sent) per tick.
    """
    ticks: list[tuple[float, list[object], bytes]] = []
    while True:
        deadline = conn.next_deadline()
        assert deadline is not None
        if deadline > until:
            return ticks
        assert not ticks or deadline > ticks[-1][0], "the deadline must move forward"
        events = list(conn.handle_timer(deadline))
        ticks.append((deadline, events, conn.data_to_send()))
        between(deadline)


def test_no_timer_before_open_or_when_disabled() -> None:
    conn = AMQPConnection(heartbeat=HB)
    assert conn.next_deadline() is None
    conn = handshake(
        AMQPConnection(heartbeat=0), tune=(2047, 131072, HB), expect_tune_ok=(2047, 131072, 0)
    )
    assert conn.next_deadline() is None
    assert conn.handle_timer(T0) == []
    assert conn.handle_timer(T0 + 10 * HB) == []
    assert conn.data_to_send() == b""


def test_broker_disabling_heartbeats() -> None:
    conn = handshake(AMQPConnection(), tune=(2047, 131072, 0))
    assert conn.next_deadline() is None


def test_deadline_moves_a_quarter_interval_per_tick() -> None:
    """A deadline that stays in the past would make the driver spin."""
    conn = started()
    ticks = follow(conn, T0 + HB)
    assert [now for now, _, _ in ticks] == [T0 + HB / 4 * k for k in range(1, 5)]


def test_heartbeat_after_half_an_interval_of_quiet_output() -> None:
    conn = started()
    conn.receive_data(F.heartbeat())  # keep the peer alive; only our output is quiet
    ticks = follow(conn, T0 + HB / 2)
    assert [(now, out) for now, _, out in ticks] == [
        (T0 + HB / 4, b""),
        (T0 + HB / 2, HEARTBEAT_FRAME),
    ]


def test_heartbeats_keep_going_while_idle() -> None:
    """Every half interval or so; the broker's heartbeats keep it from timing out."""
    conn = started()
    ticks = follow(conn, T0 + 10 * HB, between=lambda now: conn.receive_data(F.heartbeat()))
    sent_at = [now for now, _, out in ticks if out == HEARTBEAT_FRAME]
    assert len(sent_at) >= 10
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert all(HB / 2 <= gap <= 3 * HB / 4 for gap in gaps), gaps
    assert not any(events for _, events, _ in ticks)


def test_no_heartbeat_while_data_flows() -> None:
    conn = started()
    ch = open_channel(conn)

    def busy(now: float) -> None:
        conn.publish(ch, b"\x00", b"\x01q", b"x", EMPTY_PROPERTIES_BYTES)
        conn.data_to_send()
        conn.receive_data(F.heartbeat())

    ticks = follow(conn, T0 + 10 * HB, between=busy)
    assert len(ticks) == 40
    assert all(out == b"" for _, _, out in ticks)
    assert not any(events for _, events, _ in ticks)


@pytest.mark.parametrize("offset", [0.001, 0.1, 0.2499])
def test_silence_times_out_between_1_75_and_2_intervals(offset: float) -> None:
    """Wherever the last byte falls between two ticks, detection takes 1.75 to 2 intervals."""
    conn = started()
    last_rx = T0 + offset * HB  # arrives before the next tick at T0 + HB/4
    conn.receive_data(F.heartbeat())
    ticks = follow(conn, T0 + 3 * HB)
    first_time, [event] = next((now, events) for now, events, _ in ticks if events)
    assert isinstance(event, HeartbeatTimedOut)
    assert 1.75 * HB <= first_time - last_rx <= 2 * HB
    assert event.silent_for == 1.75 * HB


def test_not_before_1_75_intervals_even_with_frequent_ticks() -> None:
    """A driver may call handle_timer more often than asked; that never shortens the grace."""
    conn = started()
    conn.receive_data(F.heartbeat())
    now = T0
    while True:
        now += HB / 100
        events = conn.handle_timer(now)
        conn.data_to_send()
        if events:
            break
        assert now - T0 < 2 * HB
    assert 1.75 * HB <= now - T0 <= 2 * HB


def test_incoming_data_resets_the_silence() -> None:
    conn = started()
    follow(conn, T0 + 1.5 * HB)
    conn.receive_data(F.heartbeat())
    ticks = follow(conn, T0 + 4 * HB)
    first_timeout = next(now for now, events, _ in ticks if events)
    assert T0 + 1.5 * HB + 1.75 * HB <= first_timeout <= T0 + 1.5 * HB + 2 * HB


def test_timer_runs_while_closing_and_stops_when_closed() -> None:
    conn = started()
    conn.close()
    conn.data_to_send()
    assert conn.next_deadline() is not None
    conn.receive_data(F.method(0, commands.Connection.CloseOk()))
    assert conn.next_deadline() is None
    assert conn.handle_timer(T0 + 10 * HB) == []
    assert conn.data_to_send() == b""
