"""The command transcripts of docs/cli.md, run against the private broker, and the fate of
every other shell block of the documentation.

docs/cli.md's ```console blocks are one session, in page order: the queues the first
blocks declare are the ones later blocks publish to, consume and delete. Each `$ ` line is
run as typed by `bash -c` (so `seq 1 3 | leveret ...` and `$LEVERET_URL` work as in a
terminal), with the `leveret` console script of this environment first on PATH, stdout and
stderr in one pipe, unbuffered so their lines interleave as on a terminal, and
`LEVERET_URL` set as the page's `export LEVERET_URL=...` line says, but pointed at the
private node, in a virtual host of its own created and deleted here so the page's queue
names meet no other test. The page was recorded against `127.0.0.1:5673`, vhost `/`: that
address in a command is replaced by the private node's, and in the output the node's
address and virtual host are written back as the page's before comparing.

Checks, for each command:

- the exit code: 0, or the number that a `$ echo $?` line right after its output shows
  (that line is not run; it only states the code);
- the output, line by line, exactly, after the run-dependent fields below are replaced by
  placeholders on both sides (`NORMALISE`); a line `...` (indented or not) in the page
  stands for any number of lines, none included (a traceback's frames, the progress lines
  a slower run prints).

Run-dependent fields (`NORMALISE`): durations after `in` (`in 9.7 ms`, `in 1.16 s`),
rates (`17,258 msg/s`), the broker's version and node name (`ping`), a message's stamped
id and timestamp (`consume --json`), generated queue names (`bench`, `demo`), the progress
bar's position and percentage, the latency percentiles, the demo's elapsed time and its number of
redeliveries (it nacks a random 1%). Everything else, counts and error texts included, is
compared as printed.

Every other shell block (```sh, ```bash, ```console) of docs/ and README.md is classified
line by line by `SHELL_LINES`; a line no rule covers fails the test of that line, so a
new block must be run or checked here, or skipped with its reason (pytest's report lists
the skips with their reasons):

- `leveret ...` (README's summary of the command line): parsed by the CLI's own argument
  parser, not run: they are a reference card, not a session (some need a running service,
  a file `photo.jpg`, or run for 30 s);
- `pip install 'leveret[X]'`: X must be an extra of pyproject.toml; not run (it installs);
- `python examples/...`: run as processes by tests/integration/test_examples.py, and
  parsed with `--help` by test_code_blocks.py;
- `python -m leveret.testing ...` (start, stop, url, ctl, logs): not run, they start and
  stop a node of their own on port 5673, outside the suite's; parsed by test_code_blocks.py;
- `export ...=...`: what it sets is set here by the fixtures (LEVERET_URL, AMQP_URL);
- `make ...`, `.venv/bin/pytest ...`: the build and the test suite themselves.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import leveret
from leveret.cli import build_parser
from leveret.demo import _parser as demo_parser
from leveret.testing import RabbitMQNode
from tests.docs.test_code_blocks import DOC_FILES, README, ROOT, _blocks

pytestmark = pytest.mark.integration

CLI_PAGE = ROOT / "docs" / "cli.md"
PAGE_ADDRESS = "127.0.0.1:5673"  # the node the page was recorded against
PAGE_VHOST = "/"
CLI_VHOST = "leveret-cli-docs"
COMMAND_TIMEOUT = 60.0  # seconds for one command; the slowest (bench, publish --rate) take ~3
ELLIPSIS = "..."
LEVERET_SCRIPT = Path(sys.executable).parent / "leveret"  # put first on PATH

# (pattern, replacement): applied to every line of the page's output and of the actual one.
NORMALISE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"\bin \d+(?:\.\d+)? (m?s)\b", r"in <t> \1"),  # ping, bench, demo
        (r"\s+\d[\d,]* msg/s\b", " <n> msg/s"),  # progress bars, bench, demo
        (r"^server( +)(\S+) \S+ \(.*\)$", r"server\1\2 <version>"),  # ping
        (r"^cluster( +)\S+$", r"cluster\1<node>"),  # ping: leveret-PORT@HOST
        (r'"message_id": "[0-9a-f]+-\d+"', '"message_id": "<id>"'),  # consume --json
        (r'"timestamp": "[^"]+"', '"timestamp": "<time>"'),  # consume --json
        (r"^\[[#.]+\] +[\d,]+/([\d,]+) +\d+%", r"[<bar>] <n>/\1 <p>%"),  # publish --progress
        (r"\bleveret-bench-[0-9a-f]+\b", "leveret-bench-<id>"),  # bench
        (r"^(publish -> \w+)(?: +\d+\.\d+)+$", r"\1 <latencies>"),  # bench
        (r"\bleveret\.demo\.[0-9a-f]+\b", "leveret.demo.<id>"),  # demo
        (r"^ *\d+\.\d s  published", "<t> s  published"),  # demo's progress line
        (r"\bredeliver(ed|ies) \d+", r"redeliver\1 <n>"),  # demo
        (r"\(nacked on purpose: \d+\)", "(nacked on purpose: <n>)"),  # demo
    ]
]


@dataclass(frozen=True)
class Command:
    line: int  # of the `$ ` line in the page, 1-based
    text: str  # as typed, without the prompt
    output: tuple[str, ...]  # the lines the page shows after it
    exit_code: int  # 0, or what the `echo $?` after it shows

    @property
    def id(self) -> str:
        return f"{CLI_PAGE.relative_to(ROOT)}:{self.line}"


def _console_commands(path: Path) -> list[Command]:
    """The `$ ` commands of a page's ```console blocks, in page order."""
    commands: list[Command] = []
    for block in _blocks(path):
        if block.language != "console":
            continue
        lines = block.code.rstrip("\n").split("\n")
        starts = [
            k for k, text in enumerate(lines) if text.startswith("$ ") and text != "$ echo $?"
        ]
        assert starts[:1] == [0], f"{path}:{block.line}: a console block starts with `$ `"
        for k, end in zip(starts, [*starts[1:], len(lines)], strict=True):
            output, exit_code = lines[k + 1 : end], 0
            if "$ echo $?" in output:
                n = output.index("$ echo $?")
                where = f"{path}:{block.line + 2 + k + n}"
                assert output[n + 1 :], f"{where}: no exit code after `echo $?`"
                assert output[n + 1].isdigit(), f"{where}: no exit code after `echo $?`"
                assert len(output) == n + 2, f"{where}: `echo $?` ends a command's output"
                output, exit_code = output[:n], int(output[n + 1])
            commands.append(Command(block.line + 1 + k, lines[k][2:], tuple(output), exit_code))
    return commands


COMMANDS = _console_commands(CLI_PAGE)


def normalise(line: str) -> str:
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    return line


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line after `normalise`; an expected `...` line matches any lines, or none."""
    if not expected:
        return not actual
    if expected[0].strip() == ELLIPSIS:
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return (
        bool(actual)
        and normalise(expected[0]) == normalise(actual[0])
        and (matches(expected[1:], actual[1:]))
    )


def _page_url() -> str:
    """The URL of the page's `export LEVERET_URL=...` line."""
    for block in _blocks(CLI_PAGE):
        for line in block.code.splitlines():
            if match := re.match(r"export LEVERET_URL=(\S+)", line.strip()):
                return match[1]
    raise AssertionError(f"{CLI_PAGE}: no `export LEVERET_URL=...` line")


@pytest.fixture(scope="module")
def cli_url(rabbitmq: RabbitMQNode, rabbitmq_url: str) -> Iterator[str]:
    """The node's URL with a virtual host for the page's session, deleted with all it left."""
    rabbitmq.add_vhost(CLI_VHOST)
    try:
        yield rabbitmq_url.rstrip("/") + "/" + CLI_VHOST
    finally:
        rabbitmq.delete_vhost(CLI_VHOST)


def _as_on_the_page(url: str) -> Callable[[str], str]:
    """Rewrites the node's address and virtual host in an output line as the page's."""
    parsed = leveret.parse_url(url)
    address = f"{parsed.host}:{parsed.port}"
    page = leveret.parse_url(_page_url().replace(PAGE_ADDRESS, address))
    assert page.virtual_host == PAGE_VHOST
    replacements = [
        (parsed.display(), page.display().replace(address, PAGE_ADDRESS)),
        (f"vhost '{parsed.virtual_host}'", f"vhost '{PAGE_VHOST}'"),
        (address, PAGE_ADDRESS),
    ]

    def rewrite(line: str) -> str:
        for old, new in replacements:
            line = line.replace(old, new)
        return line

    return rewrite


def _run(command: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    address = leveret.parse_url(url)
    env = {
        **os.environ,
        "PATH": f"{LEVERET_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LEVERET_URL": url,
        "PYTHONUNBUFFERED": "1",  # stdout and stderr lines in the order written
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    typed = command.replace(PAGE_ADDRESS, f"{address.host}:{address.port}")
    return subprocess.run(
        ["bash", "-c", typed],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def test_the_page_has_a_session() -> None:
    """The parsing itself: a fence or prompt change that hid the commands would pass."""
    assert len(COMMANDS) >= 25
    assert {c.text.split()[1] for c in COMMANDS} >= {
        "ping", "declare", "unbind", "purge", "delete", "publish", "consume", "bench", "demo"
    }  # fmt: skip
    assert sum(c.exit_code != 0 for c in COMMANDS) >= 5
    assert all(re.match(r"(seq 1 3 \| )?leveret ", c.text) for c in COMMANDS)
    # `...` is for run-dependent stretches, not a way to stop checking a command's output
    assert sum(line.strip() == ELLIPSIS for c in COMMANDS for line in c.output) <= 3


def test_the_comparison_can_fail() -> None:
    """`...` and NORMALISE leave the rest of a line compared: every line the page shows for a
    command stops matching with two characters more, and counts are not placeholders."""
    for command in COMMANDS:
        expected = list(command.output)
        for n, line in enumerate(expected):
            if line.strip() != ELLIPSIS:
                assert not matches(expected, [*expected[:n], line + " !", *expected[n + 1 :]])
        assert not matches(expected, [*expected, "one line more"])
    assert matches(["a", ELLIPSIS, "c"], ["a", "c"])
    assert matches(["a", "  ...", "c"], ["a", "b", "b", "c"])
    assert not matches(["a", ELLIPSIS, "c"], ["a", "b"])
    assert not matches(["purged invoices (3000 messages)"], ["purged invoices (2999 messages)"])
    assert not matches(["consumed 20,000 (0 lost)"], ["consumed 19,999 (1 lost)"])


def test_cli_page_session(cli_url: str, tmp_path: Path) -> None:
    """Every command of the page in order, each checked before the next runs (they build on
    each other, so the first difference is the one to read)."""
    assert LEVERET_SCRIPT.is_file(), f"no console script {LEVERET_SCRIPT}"
    as_on_the_page = _as_on_the_page(cli_url)
    for command in COMMANDS:
        result = _run(command.text, cli_url, tmp_path)
        actual = [as_on_the_page(line) for line in result.stdout.splitlines()]
        shown = "\n".join(f"    {line}" for line in actual) or "    (no output)"
        assert result.returncode == command.exit_code, (
            f"{command.id}: `{command.text}` exited {result.returncode}, the page says "
            f"{command.exit_code}; its output:\n{shown}"
        )
        assert matches(list(command.output), actual), (
            f"{command.id}: `{command.text}` printed something else than the page shows:\n"
            + "\n".join(f"    {line}" for line in command.output)
            + f"\n  but (before NORMALISE):\n{shown}"
        )


# The other shell blocks, line by line.


def _parses(line: str) -> None:
    """A `leveret ...` line: the CLI's own parser and argument checks accept it."""
    words = shlex.split(line.rpartition("| ")[2])[1:]
    try:
        if words[:1] == ["demo"]:  # the demo parses its own arguments
            demo_parser().parse_args(words[1:])
            return
        args = build_parser().parse_args(words)
        if (check := getattr(args, "check", None)) is not None:
            check(args)
    except SystemExit as exc:  # argparse's way to refuse (its message is on stderr)
        pytest.fail(f"leveret refuses {line!r} (exit code {exc.code})")


def _is_an_extra(line: str) -> None:
    extra = re.fullmatch(r"pip install '?leveret\[(\w+)\]'?", line)
    assert extra is not None, line
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert extra[1] in pyproject["project"]["optional-dependencies"], f"no extra {extra[1]!r}"


# (pattern of a line, what is done with it: a check, or the reason it is not run)
SHELL_LINES: list[tuple[re.Pattern[str], Callable[[str], None] | str]] = [
    (re.compile(p), how)
    for p, how in [
        (r"(.* \| )?leveret\s.*", _parses),
        (r"pip install .*", _is_an_extra),
        (r"(\.venv/bin/)?python examples/\S+\.py\b.*", "run by tests/integration/test_examples.py"),
        (r"(\.venv/bin/)?python -m leveret\.testing \w+.*", "a node of its own on port 5673"),
        (r"export (LEVERET_URL|AMQP_URL)=.*", "set by the fixtures instead"),
        (r"make \w+", "the build and the whole suite"),
        (r"\.venv/bin/pytest\b.*", "the test suite itself"),
    ]
]


def _shell_lines() -> list[tuple[str, str]]:
    """(page:line, command) for each line of the shell blocks this module does not run."""
    found = []
    for path in [*DOC_FILES, README]:
        for block in _blocks(path):
            if block.language not in ("sh", "bash", "shell", "console"):
                continue
            if path == CLI_PAGE and block.language == "console":
                continue  # test_cli_page_session
            for k, raw in enumerate(block.code.splitlines()):
                line = re.sub(r"\s+#(\s.*)?$", "", raw).strip()  # a comment, not `'app.#'`
                if line:
                    found.append((f"{path.relative_to(ROOT)}:{block.line + 1 + k}", line))
    return found


SHELL_LINES_FOUND = _shell_lines()


def test_there_are_other_shell_blocks() -> None:
    assert len(SHELL_LINES_FOUND) >= 40
    assert sum(line.startswith("leveret ") for _, line in SHELL_LINES_FOUND) >= 15


@pytest.mark.parametrize(
    ("where", "line"), SHELL_LINES_FOUND, ids=[w for w, _ in SHELL_LINES_FOUND]
)
def test_every_shell_line_is_accounted_for(where: str, line: str) -> None:
    """Checked when a rule has a check, else skipped by a rule with its reason; a line no rule
    covers fails, so a new shell block cannot go unrun without a reason written here."""
    for pattern, how in SHELL_LINES:
        if pattern.fullmatch(line):
            if callable(how):
                how(line)
                return
            pytest.skip(f"not run: {how}")
    pytest.fail(f"{where}: no rule of SHELL_LINES covers {line!r}: run it, or skip it saying why")
