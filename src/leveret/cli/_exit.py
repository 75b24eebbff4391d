"""Exit codes by exception class, and the one-line error report.

Scripts branch on `$?`, so the numbers are a stable interface: a code is never
reused for another meaning. A failure maps to the row of the most specific
class in its MRO, so a new subclass (say, another 3xx/5xx reply) lands in its
family's row without an edit here.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import TextIO

from pamqp.commands import INDEX_MAPPING

import leveret

__all__ = [
    "BROKEN_PIPE",
    "EXIT_CODES",
    "INTERNAL_ERROR",
    "INTERRUPTED",
    "OK",
    "USAGE",
    "ExitCode",
    "UsageError",
    "exit_code",
    "one_line",
    "render_table",
    "report",
]

OK = 0
USAGE = 2
INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE: a bug in leveret, not a broker answer
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a tool killed by the signal would report


class UsageError(Exception):
    """A combination of arguments argparse cannot check; exits like an argparse error."""


@dataclass(frozen=True, slots=True)
class ExitCode:
    """One row of the table: the code, the classes that produce it, and what it means."""

    code: int
    classes: tuple[type[BaseException], ...]
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, (), "success"),
    ExitCode(1, (leveret.LeveretError,), "other leveret errors; bench: a message was lost"),
    ExitCode(2, (UsageError, ValueError), "bad arguments or values; nothing was sent"),
    ExitCode(3, (leveret.ConnectFailed,), "no broker reachable (TCP, TLS or handshake)"),
    ExitCode(4, (leveret.AuthenticationFailed,), "the broker refused the credentials"),
    ExitCode(
        5,
        (leveret.ConnectionClosed,),
        "connection lost or closed (530 no such vhost)",
    ),
    ExitCode(6, (leveret.AccessRefused,), "403: no permission for this resource"),
    ExitCode(7, (leveret.NotFound,), "404: no such queue or exchange"),
    ExitCode(8, (leveret.ResourceLocked,), "405: queue exclusive to another connection"),
    ExitCode(9, (leveret.PreconditionFailed,), "406: e.g. redeclared with other arguments"),
    ExitCode(10, (leveret.ChannelClosedByServer,), "another channel error from the broker"),
    ExitCode(11, (leveret.PublishNacked,), "the broker refused (nacked) a message"),
    ExitCode(12, (leveret.MessageReturned,), "no queue took a --mandatory message or a call"),
    ExitCode(
        13,
        (leveret.PublishTimeout, leveret.RPCTimeout, TimeoutError),
        "no confirm or reply in time",
    ),
    ExitCode(14, (leveret.RemoteError,), "call: the server's handler raised"),
    ExitCode(15, (leveret.ConsumerCancelled,), "consume: the broker cancelled the consumer"),
    ExitCode(70, (Exception,), "internal error (a bug; --verbose shows where)"),
    ExitCode(130, (KeyboardInterrupt,), "interrupted (Ctrl-C)"),
    ExitCode(141, (BrokenPipeError,), "stdout closed early (e.g. piped into head)"),
)

_BY_CLASS: dict[type[BaseException], int] = {
    cls: row.code for row in EXIT_CODES for cls in row.classes
}


def exit_code(exc: BaseException) -> int:
    """The code of the most specific class in `exc`'s MRO that has a row."""
    for cls in type(exc).__mro__:
        code = _BY_CLASS.get(cls)
        if code is not None:
            return code
    return INTERNAL_ERROR


def render_table() -> str:
    """The table as plain text, for --help and the module docstring."""
    names = [", ".join(cls.__name__ for cls in row.classes) or "-" for row in EXIT_CODES]
    width = max(map(len, names))
    lines = [f"code  {'exception':<{width}}  meaning"]
    for row, name in zip(EXIT_CODES, names, strict=True):
        lines.append(f"{row.code:>4}  {name:<{width}}  {row.meaning}")
    return "\n".join(lines)


def _details(exc: BaseException) -> list[str]:
    """What --verbose adds beyond the traceback: the broker's reply fields, and the AMQP
    method the broker refused, by name (its class and method ids are not for humans)."""
    fields = ("reply_code", "reply_text", "exchange", "routing_key")
    shown = [f"{name}={getattr(exc, name)!r}" for name in fields if hasattr(exc, name)]
    class_id, method_id = getattr(exc, "class_id", 0), getattr(exc, "method_id", 0)
    if class_id:
        method = INDEX_MAPPING.get(class_id << 16 | method_id)
        name = getattr(method, "name", None) or f"{class_id}/{method_id}"
        shown.append(f"method={name}")
    return [f"details: {', '.join(shown)}"] if shown else []


def one_line(exc: BaseException) -> str:
    """`leveret: NotFound: 404 NOT_FOUND - no queue 'x' in vhost '/'`, on one line."""
    text = " ".join(str(exc).split())  # broker texts and OSErrors may hold newlines
    name = type(exc).__name__
    if isinstance(exc, UsageError):
        return f"leveret: error: {text}"
    if exit_code(exc) == INTERNAL_ERROR:
        return f"leveret: internal error: {name}: {text} (--verbose shows the traceback)"
    return f"leveret: {name}: {text}" if text else f"leveret: {name}"


def report(exc: BaseException, verbose: int, out: TextIO | None = None) -> int:
    """Print the error (the traceback and reply fields first with `verbose`); return its code."""
    out = out or sys.stderr
    if verbose:
        out.write("".join(traceback.format_exception(exc)))
        for line in _details(exc):
            print(line, file=out)
    print(one_line(exc), file=out)
    return exit_code(exc)
