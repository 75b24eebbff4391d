"""The command line's pure parts, without a broker: `leveret bench` arithmetic (percentiles,
the summary, the loss accounting), the exit-code table and the progress bar."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import re
import shlex
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import leveret
import leveret.cli
import leveret.demo
from leveret import exceptions
from leveret.cli._exit import EXIT_CODES, UsageError, exit_code, one_line, render_table, report
from leveret.cli._load import HEADER_SIZE, Tracker
from leveret.cli._progress import Progress, render
from leveret.cli._summary import BenchSummary, Latency, percentile


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.5) == 100
    assert percentile(values, 100) == 100
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 75) == 3
    assert percentile([7], 1) == 7


def test_percentile_rejects_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="150"):
        percentile([1], 150)
    with pytest.raises(ValueError, match="0"):
        percentile([1], 0)


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300))
def test_latency_percentiles_are_ordered_measured_values(samples: list[int]) -> None:
    latency = Latency.from_ns(samples)
    assert latency is not None
    values = [latency.p50, latency.p75, latency.p95, latency.p99, latency.max]
    assert values == sorted(values)
    assert latency.max == max(samples) / 1000
    assert latency.count == len(samples)
    in_us = {s / 1000 for s in samples}
    assert set(values) <= in_us
    # at least half of the samples are at or below p50
    assert sum(s / 1000 <= latency.p50 for s in samples) * 2 >= len(samples)


def test_latency_of_nothing_is_none() -> None:
    assert Latency.from_ns([]) is None


def summary(**changes: object) -> BenchSummary:
    values: dict[str, object] = {
        "queue": "q",
        "queue_type": "classic",
        "producers": 1,
        "consumers": 1,
        "size": 128,
        "published": 1000,
        "confirmed": 1000,
        "failed": 0,
        "consumed": 1000,
        "duplicates": 0,
        "lost": 0,
        "publish_seconds": 2.0,
        "consume_seconds": 4.0,
        "confirm_latency": Latency(1000, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0),
        "delivery_latency": Latency(1000, 1500.0, 2500.0, 3500.0, 4500.0, 5500.0),
    }
    values.update(changes)
    return BenchSummary(**values)  # type: ignore[arg-type]


def test_summary_rates_and_json() -> None:
    data = summary().to_json()
    assert data["published_per_s"] == 500.0
    assert data["confirmed_per_s"] == 500.0
    assert data["consumed_per_s"] == 250.0
    assert data["ok"] is True
    assert data["confirm_latency_us"]["p99"] == 4000.0
    assert data["delivery_latency_us"]["max"] == 5500.0
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    "changes",
    [
        {"lost": 3},
        {"failed": 1, "confirmed": 999},
        {"confirmed": 999},
        {"interrupted": True},
        {"error": "NotFound: no queue"},
    ],
)
def test_summary_not_ok(changes: dict[str, object]) -> None:
    assert summary(**changes).ok is False


def test_summary_without_consumers_has_no_lost_and_no_zero_division() -> None:
    data = summary(consumers=0, consumed=0, lost=None, delivery_latency=None, consume_seconds=0.0)
    assert data.ok is True
    assert data.to_json()["consumed_per_s"] == 0.0
    text = data.render()
    assert "consumed" not in text
    assert "publish -> delivery" not in text


def test_summary_render_shows_milliseconds() -> None:
    text = summary(lost=2, duplicates=5).render()
    assert "(5 duplicates, 2 lost)" in text
    confirm_line = next(line for line in text.splitlines() if line.startswith("publish -> confirm"))
    assert confirm_line.split()[3:] == ["1.00", "2.00", "3.00", "4.00", "5.00"]


def body_of(tracker: Tracker, seq: int, size: int = 32) -> bytes:
    return tracker.body(seq, bytes(size - HEADER_SIZE))[1]


def test_tracker_counts_lost_duplicates_and_foreign_messages() -> None:
    tracker = Tracker(count=5)
    seqs = [tracker.next_seq() for _ in range(6)]
    assert seqs == [0, 1, 2, 3, 4, None]  # --count bounds what is handed out
    view = tracker.views[0]
    for seq in (0, 1, 2, 3):
        tracker.confirmed_one(seq, 1000)
    # Delivered before its confirm (common) still counts.
    tracker.delivered(body_of(tracker, 4), 0, view)
    tracker.confirmed_one(4, 1000)
    for seq in (0, 2, 2):
        tracker.delivered(body_of(tracker, seq), 0, view)
    other = Tracker(count=5)
    tracker.delivered(body_of(other, 1), 0, view)  # another run's tag
    tracker.delivered(b"short", 0, view)
    assert (tracker.consumed, tracker.duplicates, tracker.foreign) == (3, 1, 2)
    assert tracker.unconsumed() == 2  # 1 and 3


def test_tracker_stream_views_need_every_consumer() -> None:
    tracker = Tracker(count=2, views=2)
    for _ in range(2):
        seq = tracker.next_seq()
        assert seq is not None
        tracker.confirmed_one(seq, 10)
    first, second = tracker.views
    tracker.delivered(body_of(tracker, 0), 0, first)
    tracker.delivered(body_of(tracker, 1), 0, first)
    tracker.delivered(body_of(tracker, 0), 0, second)
    assert tracker.unconsumed() == 1
    assert tracker.duplicates == 0


def test_tracker_without_count_grows_and_stops() -> None:
    tracker = Tracker()
    start = len(tracker.views[0])
    seqs = [tracker.next_seq() for _ in range(start + 3)]
    assert seqs[-1] == start + 2
    assert len(tracker.views[0]) > start
    tracker.stop(RuntimeError("first"))
    tracker.stop(RuntimeError("second"))
    assert tracker.next_seq() is None
    assert str(tracker.error) == "first"


def test_body_header_carries_send_time_tag_and_sequence() -> None:
    tracker = Tracker(count=1)
    sent, body = tracker.body(0, bytes(100))
    assert len(body) == HEADER_SIZE + 100
    assert struct.unpack_from(">QII", body) == (sent, tracker.tag, 0)


# -- exit codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (leveret.LeveretError("x"), 1),
        (leveret.PayloadError("not JSON"), 1),  # a ValueError too: the leveret row wins
        (UsageError("x"), 2),
        (ValueError("x"), 2),
        (leveret.ConnectFailed("x"), 3),
        (leveret.AuthenticationFailed("x"), 4),  # more specific than its ConnectFailed base
        (leveret.ConnectionLost("x"), 5),
        (leveret.HeartbeatTimeout("x"), 5),
        (leveret.ConnectionForced(320, "CONNECTION_FORCED"), 5),
        (leveret.NotAllowed(530, "NOT_ALLOWED"), 5),
        (leveret.AccessRefused(403, "ACCESS_REFUSED"), 6),
        (leveret.NotFound(404, "NOT_FOUND"), 7),
        (leveret.ResourceLocked(405, "RESOURCE_LOCKED"), 8),
        (leveret.PreconditionFailed(406, "PRECONDITION_FAILED"), 9),
        (leveret.ContentTooLarge(311, "CONTENT_TOO_LARGE"), 10),
        (leveret.PublishNacked("x"), 11),
        (leveret.MessageReturned(312, "NO_ROUTE", "", "q", b"", leveret.Properties()), 12),
        (leveret.PublishTimeout("x"), 13),  # a PublishError and a TimeoutError: 13, not 1
        (leveret.RPCTimeout("x"), 13),
        (TimeoutError(), 13),
        (leveret.RemoteError("KeyError", "'n'"), 14),
        (leveret.ConsumerCancelled("q", "tag"), 15),
        (RuntimeError("bug"), 70),
        (KeyboardInterrupt(), 130),
        (BrokenPipeError(), 141),
    ],
)
def test_exit_code_is_the_most_specific_row(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_every_leveret_exception_has_a_broker_code_not_internal_or_usage() -> None:
    classes = [getattr(exceptions, name) for name in exceptions.__all__]
    errors = [cls for cls in classes if inspect.isclass(cls) and issubclass(cls, Exception)]
    assert len(errors) > 30
    for cls in errors:
        code = next(row.code for row in EXIT_CODES for c in cls.__mro__ if c in row.classes)
        assert code not in (0, 2, 70, 130), cls


ROOT = Path(__file__).parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"


def test_codes_are_unique_and_documented_in_help_and_docstring() -> None:
    codes = [row.code for row in EXIT_CODES]
    assert len(codes) == len(set(codes))
    table = render_table()
    assert table in (leveret.cli.__doc__ or "")
    assert table in leveret.cli.build_parser().format_help()


@pytest.mark.parametrize("page", [ROOT / "README.md", CLI_PAGE], ids=lambda p: p.name)
def test_markdown_copies_of_the_exit_codes_have_every_row_and_no_other(page: Path) -> None:
    """README.md and docs/cli.md keep the table by hand, in Markdown: one row per code, each
    naming the row's classes; a code removed from EXIT_CODES must leave them too."""
    rows = {int(m[1]): line for line in page.read_text().splitlines() if (m := _ROW.match(line))}
    assert sorted(rows) == sorted(row.code for row in EXIT_CODES), page.name
    for row in EXIT_CODES:
        for cls in row.classes:
            assert f"`{cls.__name__}`" in rows[row.code], (page.name, row.code, cls)


_ROW = re.compile(r"^\| (\d+) \|")
_SHELL = re.compile(r"^```(?:console|sh|bash)\b")


def _cli_page_commands() -> list[str]:
    """The `leveret ...` commands in docs/cli.md's shell blocks (a `$ ` prompt stripped,
    also after a pipe), without the word `leveret`."""
    commands: list[str] = []
    in_shell = False
    for line in CLI_PAGE.read_text().splitlines():
        if line.startswith("```"):
            in_shell = not in_shell and bool(_SHELL.match(line))
            continue
        if not in_shell:
            continue
        for part in line.removeprefix("$ ").split(" | "):
            if part.startswith("leveret "):
                commands.append(part.removeprefix("leveret "))
    return commands


def test_the_cli_page_shows_commands() -> None:
    assert len(_cli_page_commands()) >= 20


@pytest.mark.parametrize("command", _cli_page_commands())
def test_every_command_on_the_cli_page_parses(command: str) -> None:
    """The docs test runs the page's Python, not its shell lines: at least they must parse."""
    words = shlex.split(command)
    parser = leveret.cli.build_parser()
    if words[0] == "demo":  # `leveret demo` hands its arguments to the demo's own parser
        parser, words = leveret.demo._parser(), words[1:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"leveret {command}: exit {exc.code}\n{stderr.getvalue()}")


def test_one_line_flattens_multiline_messages() -> None:
    line = one_line(leveret.NotFound(404, "NOT_FOUND - no queue\n'x'"))
    assert line == "leveret: NotFound: 404 NOT_FOUND - no queue 'x'"
    assert one_line(UsageError("give BODY")) == "leveret: error: give BODY"
    internal = one_line(RuntimeError("boom"))
    assert internal.startswith("leveret: internal error: RuntimeError: boom")
    assert "--verbose" in internal


def test_report_is_one_line_and_verbose_adds_traceback_and_reply_fields() -> None:
    try:
        raise leveret.NotFound(404, "NOT_FOUND - no queue 'x'", 50, 10)
    except leveret.NotFound as caught:
        error = caught
    quiet = io.StringIO()
    assert report(error, 0, quiet) == 7
    assert quiet.getvalue() == "leveret: NotFound: 404 NOT_FOUND - no queue 'x'\n"
    loud = io.StringIO()
    assert report(error, 1, loud) == 7
    lines = loud.getvalue().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "reply_code=404" in lines[-2]
    assert "method=Queue.Declare" in lines[-2]  # class 50, method 10
    assert lines[-1] == quiet.getvalue().rstrip()


# -- progress bar ----------------------------------------------------------------------------------


def test_progress_render() -> None:
    line = render(300, 1000, 2.0)
    assert line.startswith("[#########.....................]")
    assert "  300/1,000  30%" in line
    assert line.endswith("150 msg/s")
    assert render(1000, 1000, 1.0).startswith("[" + "#" * 30 + "]")
    assert render(12345, None, 0.0) == "   12,345 sent  0 msg/s"


def test_progress_into_a_file_writes_whole_lines_and_always_the_last() -> None:
    out = io.StringIO()
    progress = Progress(out, 3)
    for _ in range(3):
        progress.advance()
    progress.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert "3/3 100%" in lines[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_in_place_and_ends_the_line() -> None:
    out = _Terminal()
    progress = Progress(out, 2)
    progress.advance(2)
    progress.finish()
    text = out.getvalue()
    assert text.startswith("\r[")
    assert text.endswith("\x1b[K\n")  # the rest of the old line erased, then a newline
    assert text.count("\n") == 1
    assert "2/2 100%" in text.rsplit("\r", 1)[-1]
