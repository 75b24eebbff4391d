"""Every Python code block of the documentation, run against the private broker.

Documentation that is not run goes stale. The rules, by a block's fence:

- ```python: a complete program, run as `python block.py` in a scratch directory with
  `AMQP_URL` set to the private node's URL, in a virtual host of the docs' own that is
  deleted afterwards, so what the examples declare meets no other test (blocks read it as
  `os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")`). It must exit 0, and when
  the next block is ```text title="Output", print exactly that.
- ```python title="test_NAME.py": a test module, run by pytest with the `rabbitmq`,
  `rabbitmq_url` and `rabbitmqctl` fixtures pointing at the same node.
- ```python title="aio-pika": the other side of a migration guide. aio-pika is not a
  dependency of leveret, so these are only compiled (a syntax error still fails).
- `--8<-- "examples/X.py"`: a tutorial included verbatim from examples/, which
  tests/integration/test_examples.py runs as real processes; here we check it is one of them.

Shell blocks are the business of test_cli_transcripts.py: it runs the ```console
transcripts of cli.md against the same node, and accounts for every other shell line (run,
checked, or skipped with its reason). Here, each `python examples/...` and
`python -m leveret.testing ...` line of the ```sh and ```bash blocks must at least parse:
it is run with `--help` (with the subcommand alone for leveret.testing).

README.md keeps short fragments (`conn` and `stop` defined elsewhere): its blocks that are
whole programs run with the URL in them pointed at the private node; the others are compiled.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
EXAMPLES_TEST = ROOT / "tests" / "integration" / "test_examples.py"
RUN_TIMEOUT = 90.0  # seconds for one block; they take about one
README_URL = "amqp://guest:guest@localhost/"
DOCS_VHOST = "leveret-docs"
COMPILE_ONLY_TITLES = {"aio-pika"}  # libraries leveret does not depend on
PYTEST_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>.*)$")
_TITLE = re.compile(r'title="([^"]*)"')
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    title: str | None
    code: str
    output: str | None  # the ```text title="Output" block right after it, if any

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    """Fenced blocks of a Markdown file, with the Output block that follows each."""
    raw: list[tuple[int, str, str | None, str, int]] = []  # line, lang, title, code, end
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        title = _TITLE.search(info)
        raw.append((i + 1, info.split()[0] if info else "", title and title[1], "\n".join(body), j))
        i = j + 1
    blocks = []
    for n, (line, language, title, code, end) in enumerate(raw):
        output = None
        if n + 1 < len(raw):
            nxt = raw[n + 1]
            between = lines[end + 1 : nxt[0] - 1]
            if nxt[1] == "text" and nxt[2] == "Output" and not any(s.strip() for s in between):
                output = nxt[3]
        blocks.append(Block(path, line, language, title, code + "\n", output))
    return blocks


DOC_FILES = sorted(DOCS.rglob("*.md"))
PYTHON_BLOCKS = [b for f in DOC_FILES for b in _blocks(f) if b.language in ("python", "py")]
INCLUDES = [b for b in PYTHON_BLOCKS if _INCLUDE.match(b.code.strip())]
TESTS = [b for b in PYTHON_BLOCKS if b.title and re.fullmatch(r"test_\w+\.py", b.title)]
COMPILE_ONLY = [b for b in PYTHON_BLOCKS if b.title in COMPILE_ONLY_TITLES]
SCRIPTS = [b for b in PYTHON_BLOCKS if b not in INCLUDES + TESTS + COMPILE_ONLY]
README_BLOCKS = [b for b in _blocks(README) if b.language == "python"]


SHELL_BLOCKS = [b for f in DOC_FILES for b in _blocks(f) if b.language in ("sh", "bash")]
_COMMAND = re.compile(r"^(?:\.venv/bin/)?python (examples/\S+\.py|-m leveret\.testing)\b(.*)$")
COMMANDS = [
    (block, line.split("#")[0].strip())
    for block in SHELL_BLOCKS
    for line in block.code.splitlines()
    if _COMMAND.match(line.split("#")[0].strip())
]


@pytest.fixture(scope="module")
def docs_url(rabbitmq: RabbitMQNode, rabbitmq_url: str) -> Iterator[str]:
    """The node's URL with a virtual host for the docs' examples, deleted with all they left."""
    rabbitmq.add_vhost(DOCS_VHOST)
    try:
        yield rabbitmq_url.rstrip("/") + "/" + DOCS_VHOST
    finally:
        rabbitmq.delete_vhost(DOCS_VHOST)


def _is_program(block: Block) -> bool:
    return "asyncio.run(" in block.code or "leveret.blocking.connect(" in block.code


def _run(args: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQP_URL": url, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def _check_ran(block: Block, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{block.id} exited {result.returncode}\n--- stdout\n{result.stdout}"
        f"--- stderr\n{result.stderr}"
    )
    if block.output is not None:
        assert result.stdout.strip() == block.output.strip(), (
            f"{block.id} printed something else than its Output block:\n{result.stdout}"
        )


def test_the_docs_have_runnable_blocks() -> None:
    """The collection itself: a fence change that hid every block would pass silently."""
    assert len(SCRIPTS) >= 30
    assert TESTS
    assert len(INCLUDES) == 7  # the seven tutorials
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("block", SCRIPTS, ids=lambda b: b.id)
def test_block_runs(block: Block, docs_url: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.code)
    _check_ran(block, _run([sys.executable, str(script)], tmp_path, docs_url))


@pytest.mark.parametrize("block", TESTS, ids=lambda b: b.id)
def test_test_block_passes(
    block: Block, rabbitmq: RabbitMQNode, rabbitmq_url: str, tmp_path: Path
) -> None:
    """Run with pytest; a conftest attaches the plugin's fixtures to the session's node."""
    assert block.title is not None
    (tmp_path / block.title).write_text(block.code)
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import pytest
            from leveret.testing import RabbitMQNode

            @pytest.fixture(scope="session")
            def rabbitmq():
                return RabbitMQNode.attach({rabbitmq.base_dir!r})

            @pytest.fixture(scope="session")
            def rabbitmq_url(rabbitmq):
                return rabbitmq.url

            @pytest.fixture(scope="session")
            def rabbitmqctl(rabbitmq):
                return rabbitmq.ctl
            """
        )
    )
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)  # what testing.md tells readers to set
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:leveret", "-p", "no:cacheprovider"]
    args.append(str(tmp_path))
    result = _run(args, tmp_path, rabbitmq_url)
    _check_ran(block, result)
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout  # exit 0 and ran tests


@pytest.mark.parametrize("block", COMPILE_ONLY, ids=lambda b: b.id)
def test_other_library_block_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("block", INCLUDES, ids=lambda b: b.id)
def test_included_example_is_run_by_the_examples_tests(block: Block) -> None:
    match = _INCLUDE.match(block.code.strip())
    assert match is not None
    included = ROOT / match[1]
    assert included.parent == ROOT / "examples", block.id
    assert included.is_file(), block.id
    assert f'"{included.stem}"' in EXAMPLES_TEST.read_text(), (
        f"{block.id}: {included.name} is not run by {EXAMPLES_TEST.name}"
    )


@pytest.mark.parametrize("block", README_BLOCKS, ids=lambda b: b.id)
def test_readme_block(block: Block, docs_url: str, tmp_path: Path) -> None:
    if not _is_program(block):  # a fragment: at least it must be valid Python
        compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    assert README_URL in block.code, f"{block.id}: expected the URL {README_URL}"
    script = tmp_path / "block.py"
    script.write_text(block.code.replace(README_URL, docs_url))
    _check_ran(block, _run([sys.executable, str(script)], tmp_path, docs_url))


@pytest.mark.parametrize(("block", "command"), COMMANDS, ids=[f"{b.id}:{c}" for b, c in COMMANDS])
def test_shell_command_parses(block: Block, command: str, tmp_path: Path) -> None:
    words = shlex.split(command)[1:]  # without "python"
    if words[0] == "-m":  # python -m leveret.testing SUBCOMMAND ...: the subcommand's help
        words = words[:3]
    else:
        words[0] = str(ROOT / words[0])
    result = _run([sys.executable, *words, "--help"], tmp_path, "amqp://unused/")
    assert result.returncode == 0, f"{block.id}: {command!r} does not parse:\n{result.stderr}"
