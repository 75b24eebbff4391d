"""A private, throwaway RabbitMQ node on loopback.

Why not the system broker: it is shared state between test runs, and Debian's /usr/sbin
wrappers `su` to the rabbitmq user with the system cookie and directories, so a node started
through them cannot be driven from a test as another user.  This module runs the real scripts
(/usr/lib/rabbitmq/bin on Debian) as the current user with every path -- data, logs, config,
Erlang cookie, pid file -- inside one directory that `stop()` deletes again.  AMQP and Erlang
distribution listen on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from leveret.testing._certs import TestCertificates, TLSFiles

__all__ = [
    "NodeStartError",
    "RabbitMQNode",
    "RabbitmqctlError",
    "TLSRabbitMQ",
    "ensure_rabbitmq_installed",
]

HOST = "127.0.0.1"
INSTALL_COMMAND = "sudo apt-get install -y --no-install-recommends rabbitmq-server"

_DEBIAN_BIN_DIR = Path("/usr/lib/rabbitmq/bin")
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_MARKER = ".leveret-rabbitmq-node"  # we only ever delete directories that carry it
_STATE_FILE = "node.json"
_STARTUP_LOG = "startup.log"
# Keeps the Erlang distribution listener of the node and of the CLI tools on loopback.
_LOOPBACK_DIST_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"
_PLUGIN_NAME = re.compile(r"[a-z][a-z0-9_]*")
_APP_DEPENDENCIES = re.compile(r"\{\s*applications\s*,\s*\[([^\]]*)\]")
_ATOM = re.compile(r"[a-z][A-Za-z0-9_@]*")
# Plugins that open listeners of their own, and the rabbitmq.conf lines that place them.
_PLUGIN_LISTENERS = {
    "rabbitmq_management": ("management.tcp.ip = {host}", "management.tcp.port = {port}"),
    "rabbitmq_prometheus": ("prometheus.tcp.ip = {host}", "prometheus.tcp.port = {port}"),
    "rabbitmq_web_stomp": ("web_stomp.tcp.ip = {host}", "web_stomp.tcp.port = {port}"),
    "rabbitmq_web_mqtt": ("web_mqtt.tcp.ip = {host}", "web_mqtt.tcp.port = {port}"),
    "rabbitmq_mqtt": ("mqtt.listeners.tcp.default = {host}:{port}",),
    "rabbitmq_stomp": ("stomp.listeners.tcp.default = {host}:{port}",),
    "rabbitmq_stream": ("stream.listeners.tcp.default = {host}:{port}",),
}
# Plugins that need rabbitmq.conf lines of their own to be of any use.
_PLUGIN_SETTINGS = {
    # SASL EXTERNAL: log in as the common name of the verified TLS client certificate.
    "rabbitmq_auth_mechanism_ssl": (
        "auth_mechanisms.1 = PLAIN",
        "auth_mechanisms.2 = AMQPLAIN",
        "auth_mechanisms.3 = EXTERNAL",
        "ssl_cert_login_from = common_name",
    ),
}
_POLL_INTERVAL = 0.05
_MESSAGE_LINES = 40


class NodeStartError(RuntimeError):
    """RabbitMQ could not be found, installed or started; the message says why."""


class RabbitmqctlError(RuntimeError):
    """A RabbitMQ CLI tool failed; keeps the command, exit code and output for the test report."""

    def __init__(
        self, tool: str, args: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.command = (tool, *args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"failed with exit code {returncode}"
        super().__init__(
            f"{shlex.join(self.command)} {status}\n"
            f"--- stdout ---\n{_last_lines(stdout, _MESSAGE_LINES)}\n"
            f"--- stderr ---\n{_last_lines(stderr, _MESSAGE_LINES)}"
        )


# ---------------------------------------------------------------------------- installation


def ensure_rabbitmq_installed(install: bool = True) -> Path:
    """Return the directory holding rabbitmq-server and rabbitmqctl, apt-installing if allowed."""
    bin_dir = _find_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if not install:
        raise NodeStartError(
            f"rabbitmq-server is not installed; install it with: {INSTALL_COMMAND}"
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NodeStartError(
            "rabbitmq-server is not installed and cannot be installed automatically "
            f"(that needs root and apt-get); install it with: {INSTALL_COMMAND}"
        )
    _apt_install_rabbitmq()
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise NodeStartError("apt-get installed rabbitmq-server but its scripts were not found")
    return bin_dir


def _find_bin_dir() -> Path | None:
    """Locate the real scripts, never Debian's su-to-rabbitmq wrappers in /usr/sbin."""
    if _has_scripts(_DEBIAN_BIN_DIR):
        return _DEBIAN_BIN_DIR
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    real = Path(found).resolve()  # Homebrew, generic-unix tarball: sbin/ next to plugins/
    if real.name == "rabbitmq-server" and _has_scripts(real.parent):
        return real.parent
    return None


def _has_scripts(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("rabbitmq-server", "rabbitmqctl"))


def _apt_install_rabbitmq() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"],
    )
    with _services_not_started():
        for command in commands:
            done = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise NodeStartError(
                    f"{shlex.join(command)} failed with exit code {done.returncode}:\n"
                    f"{_last_lines(done.stdout + done.stderr, _MESSAGE_LINES)}\n"
                    f"Install RabbitMQ by hand: {INSTALL_COMMAND}"
                )


@contextlib.contextmanager
def _services_not_started() -> Iterator[None]:
    """Stop the package's postinst from starting the system node on 0.0.0.0:5672."""
    try:
        fd = os.open(_POLICY_RC_D, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    except FileExistsError:  # the machine already has a policy; leave it alone
        yield
        return
    with os.fdopen(fd, "w") as policy:
        policy.write("#!/bin/sh\n# added by leveret.testing while installing rabbitmq\nexit 101\n")
    try:
        yield
    finally:
        _POLICY_RC_D.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- small helpers


def _last_lines(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail(path: Path, lines: int) -> str:
    """The last lines of a log file, reading at most its last 256 KiB."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 256 * 1024))
            data = log.read()
    except OSError:
        return ""
    return _last_lines(data.decode(errors="replace"), lines)


def _free_port(*, avoid: Collection[int] = ()) -> int:
    """A port that nothing listens on right now (there is a small race until the node binds)."""
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in avoid:
            return port


def _port_is_free(port: int) -> bool:
    """True unless something listens on the port (SO_REUSEADDR, like the broker, ignores TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether the process group has a live member; zombies do not count (PID 1 may be lazy)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the id now belongs to someone else
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if group == str(pgid) and state != "Z":
                return True
    return False


def _amqp_table(value: Any) -> Any:
    """rabbitmqctl's JSON renders AMQP tables as [name, type, value] triples; make them dicts."""
    if not isinstance(value, list):
        return value
    table: dict[str, Any] = {}
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            return value
        name, kind, field = item
        table[name] = _amqp_table(field) if kind == "table" else field
    return table


# ---------------------------------------------------------------------------- plugin discovery


def _app_dependencies(app_dir: Path) -> tuple[str, frozenset[str]] | None:
    """(name, applications it depends on) from ebin/<name>.app, None if it is no plain OTP app."""
    app_files = list((app_dir / "ebin").glob("*.app"))
    if len(app_files) != 1:
        return None
    try:
        text = app_files[0].read_text(errors="replace")
    except OSError:
        return None
    found = _APP_DEPENDENCIES.search(text)
    return app_files[0].stem, frozenset(_ATOM.findall(found.group(1)) if found else ())


def _scan_apps(source: Path) -> dict[str, tuple[Path, frozenset[str]]]:
    apps = {}
    for entry in source.iterdir():
        info = _app_dependencies(entry) if entry.is_dir() else None
        if info is not None:
            apps[info[0]] = (entry, info[1])
    return apps


def _plugins_needed(
    source: Path, apps: dict[str, tuple[Path, frozenset[str]]], wanted: Sequence[str]
) -> set[str] | None:
    """The wanted plugins plus the plugins they depend on; None if one is not a plain
    directory (a third-party .ez archive, say).  Raises for a plugin that is not there at
    all: RabbitMQ would only log a warning and boot without it."""
    plugins = {name for name, (_path, deps) in apps.items() if "rabbit" in deps}
    needed: set[str] = set()
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name not in apps:
            if any(entry.name.startswith(f"{name}-") for entry in source.iterdir()):
                return None
            available = ", ".join(sorted(plugins))
            raise NodeStartError(f"no plugin {name!r} in {source}; available: {available}")
        if name not in needed:
            needed.add(name)
            pending.extend(dep for dep in apps[name][1] if dep in plugins)
    return needed


def _link_plugins_dir(source: Path, target: Path, wanted: Sequence[str]) -> set[str] | None:
    """Fill target with links to source minus the plugins nobody asked for; return the
    plugins that will run, or None to use source as it is.

    Why: at boot RabbitMQ loads the .app file of every plugin it discovers and then every
    module of every loaded app to look for boot steps; hiding the ~35 unused bundled plugins
    makes a node start about a second faster.
    """
    apps = _scan_apps(source)
    needed = _plugins_needed(source, apps, wanted)
    if needed is None:
        return None
    hidden = {path for name, (path, deps) in apps.items() if "rabbit" in deps} - {
        apps[name][0] for name in needed
    }
    target.mkdir()
    for entry in source.iterdir():
        if entry not in hidden:
            (target / entry.name).symlink_to(entry)
    return needed


# ---------------------------------------------------------------------------- the node

_LIVE_NODES: set[RabbitMQNode] = set()


@atexit.register
def _kill_leftover_nodes() -> None:
    """Safety net: a test run that forgot (or crashed before) stop() must not leave beam.smp."""
    for node in list(_LIVE_NODES):
        node.terminate()


class RabbitMQNode:
    """A RabbitMQ node owned by this process; create it with `start()` or `attach()`."""

    def __init__(
        self,
        *,
        bin_dir: Path,
        base_dir: Path,
        port: int,
        dist_port: int,
        node_name: str,
        pgid: int | None = None,
        plugins_dir: Path | None = None,
        plugin_ports: dict[str, int] | None = None,
        tls_port: int | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        self._bin_dir = bin_dir
        self._base = base_dir
        self._port = port
        self._dist_port = dist_port
        self._node_name = node_name
        self._pgid = pgid
        self._plugins_dir = plugins_dir
        self._plugin_ports = dict(plugin_ports or {})
        self._tls_port = tls_port
        self._tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        base_dir: str | None = None,
        start_timeout: float = 120.0,
        install: bool = True,
        plugins: Sequence[str] = (),
        tls: TLSFiles | None = None,
        cookie: str | None = None,
        dist_port: int | None = None,
    ) -> Self:
        """Start a fresh node and return once `rabbitmqctl await_startup` says it is booted.

        port: AMQP port on 127.0.0.1 (default: a free one).  base_dir: where all state goes
        (default: a new temp dir); it must be empty or from an earlier node.  plugins: names
        to enable, e.g. "rabbitmq_management"; only these are visible to the node.
        "rabbitmq_auth_mechanism_ssl" also turns on SASL EXTERNAL, logging clients in as the
        common name of their certificate.  tls: also listen for AMQPS on a free loopback port
        (`tls_url`), verifying client certificates against tls.cacert when clients send one
        (`make_test_certificates(dir).server` is a ready-made TLSFiles).  cookie: the Erlang
        cookie (default: a fresh random one); nodes meant to form a cluster share one.
        dist_port: the Erlang distribution port (default: a free one).
        """
        if cookie is not None and not re.fullmatch(r"[A-Za-z0-9_]{1,255}", cookie):
            raise ValueError("cookie must be 1 to 255 letters, digits or underscores")
        for name in plugins:
            if not _PLUGIN_NAME.fullmatch(name):
                raise ValueError(f"not a plugin name: {name!r}")
        if tls is not None and not isinstance(tls, TLSFiles):
            raise TypeError(f"tls must be a TLSFiles, got {type(tls).__name__}")
        bin_dir = ensure_rabbitmq_installed(install)
        if port is None:
            port = _free_port()
        elif not _port_is_free(port):
            raise NodeStartError(f"{HOST}:{port} is already in use (another broker?)")
        if dist_port is None:
            dist_port = _free_port(avoid={port})
        node = cls(
            bin_dir=bin_dir,
            base_dir=_prepare_base_dir(base_dir),
            port=port,
            dist_port=dist_port,
            node_name=f"leveret-{port}@localhost",
            tls_port=None if tls is None else _free_port(avoid={port, dist_port}),
            tls=tls,
        )
        try:
            node._write_files(plugins, cookie)
            node._launch()
            node._await_startup(start_timeout)
        except BaseException:
            node.terminate()
            raise
        return node

    @classmethod
    def attach(cls, base_dir: str) -> Self:
        """The node that `start(base_dir=...)` left there, e.g. from another process."""
        state_file = Path(base_dir) / _STATE_FILE
        try:
            state = json.loads(state_file.read_text())
            return cls(
                bin_dir=Path(state["bin_dir"]),
                base_dir=Path(base_dir).absolute(),
                port=int(state["port"]),
                dist_port=int(state["dist_port"]),
                node_name=str(state["node_name"]),
                pgid=state.get("pgid"),
                plugins_dir=Path(state["plugins_dir"]) if state.get("plugins_dir") else None,
                plugin_ports=state.get("plugin_ports"),
                tls_port=state.get("tls_port"),
                tls=TLSFiles(**state["tls"]) if state.get("tls") else None,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NodeStartError(f"no leveret RabbitMQ node state in {state_file}: {exc}") from None

    def _write_files(self, plugins: Sequence[str], cookie: str | None = None) -> None:
        base = self._base
        (base / "mnesia").mkdir()
        (base / "log").mkdir()
        _write_cookie(base / ".erlang.cookie", cookie)
        (base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        running = set(plugins)
        shipped = (self._bin_dir / "rabbitmq-server").resolve().parent.parent / "plugins"
        if shipped.is_dir():
            needed = _link_plugins_dir(shipped, base / "plugins", plugins)
            if needed is not None:
                self._plugins_dir = base / "plugins"
                running = needed
        (base / "rabbitmq.conf").write_text(
            "# generated by leveret.testing: a private, throwaway node\n"
            f"listeners.tcp.default = {HOST}:{self._port}\n"
            "loopback_users.guest = true\n"
            "default_user = guest\n"
            "default_pass = guest\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            + self._tls_settings()
            + self._plugin_settings(running)
            + self._plugin_listeners(running)
        )

    def _tls_settings(self) -> str:
        if self._tls is None:
            return ""
        tls = self._tls
        lines = (
            f"listeners.ssl.default = {HOST}:{self._tls_port}",
            f"ssl_options.cacertfile = {Path(tls.cacert).absolute()}",
            f"ssl_options.certfile = {Path(tls.cert).absolute()}",
            f"ssl_options.keyfile = {Path(tls.key).absolute()}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        )
        return "".join(f"{line}\n" for line in lines)

    @staticmethod
    def _plugin_settings(running: Collection[str]) -> str:
        lines = [line for plugin in sorted(running) for line in _PLUGIN_SETTINGS.get(plugin, ())]
        return "".join(f"{line}\n" for line in lines)

    def _plugin_listeners(self, running: Collection[str]) -> str:
        """Config pinning the listeners of plugins to loopback and free ports (not e.g. 15672
        on all interfaces, which two nodes could not share)."""
        lines = []
        taken = {self._port, self._dist_port, self._tls_port or 0}
        for plugin in sorted(set(running) & _PLUGIN_LISTENERS.keys()):
            port = _free_port(avoid=taken)
            taken.add(port)
            self._plugin_ports[plugin] = port
            lines += [line.format(host=HOST, port=port) for line in _PLUGIN_LISTENERS[plugin]]
        return "".join(f"{line}\n" for line in lines)

    def _launch(self) -> None:
        """Run rabbitmq-server in its own session so that signals and cleanup reach the group."""
        with (self._base / "log" / _STARTUP_LOG).open("ab") as startup_log:
            self._proc = subprocess.Popen(
                [str(self._bin_dir / "rabbitmq-server")],
                cwd=self._base,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=startup_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pgid = self._proc.pid
        _LIVE_NODES.add(self)
        self._save_state()

    def _save_state(self) -> None:
        state = {
            "node_name": self._node_name,
            "port": self._port,
            "dist_port": self._dist_port,
            "pgid": self._pgid,
            "bin_dir": str(self._bin_dir),
            "plugins_dir": str(self._plugins_dir) if self._plugins_dir else None,
            "plugin_ports": self._plugin_ports,
            "tls_port": self._tls_port,
            "tls": None
            if self._tls is None
            else {"cacert": self._tls.cacert, "cert": self._tls.cert, "key": self._tls.key},
        }
        (self._base / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _await_startup(self, timeout: float) -> None:
        """Poll the AMQP port (cheap), then let one `await_startup` confirm the boot finished."""
        deadline = time.monotonic() + timeout
        while not _port_accepts(self._port):
            self._check_booting(deadline, timeout)
            time.sleep(_POLL_INTERVAL)
        remaining = max(1.0, deadline - time.monotonic())
        try:
            self.ctl(
                "await_startup", "--timeout", str(math.ceil(remaining)), timeout=remaining + 30
            )
        except RabbitmqctlError as exc:
            raise self._start_error(f"rabbitmqctl await_startup failed:\n{exc}") from None
        if self._tls_port is not None:
            self._check_tls_listener(self._tls_port)

    def _check_tls_listener(self, port: int) -> None:
        """One TLS handshake: a key that does not match the certificate, say, only shows
        there (the listener itself comes up regardless)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # whether clients can verify the broker is their test
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((HOST, port), timeout=10) as sock,
                context.wrap_socket(sock),
            ):
                pass
        except OSError as exc:
            raise self._start_error(
                f"no TLS handshake with {HOST}:{port} ({exc}); check the TLS files (is the "
                "key the certificate's?)"
            ) from None

    def _check_booting(self, deadline: float, timeout: float) -> None:
        if self._proc is not None and (code := self._proc.poll()) is not None:
            raise self._start_error(f"rabbitmq-server exited with code {code} during startup")
        if time.monotonic() > deadline:
            raise self._start_error(f"it did not finish booting within {timeout:g}s")

    def _start_error(self, reason: str) -> NodeStartError:
        return NodeStartError(
            f"RabbitMQ node {self._node_name} ({HOST}:{self._port}, state in {self._base}) "
            f"failed to start: {reason}\n{self.logs()}"
        )

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """AMQP URL for the default guest user (allowed from loopback only) and vhost "/"."""
        return f"amqp://guest:guest@{HOST}:{self._port}/"

    @property
    def tls_port(self) -> int | None:
        """The AMQPS port on 127.0.0.1, None unless the node was started with `tls`."""
        return self._tls_port

    @property
    def tls(self) -> TLSFiles | None:
        """The CA, certificate and key the TLS listener uses, None without TLS."""
        return self._tls

    @property
    def tls_url(self) -> str:
        """amqps:// URL of the TLS listener for guest (add ?cafile=... to verify the broker)."""
        if self._tls_port is None:
            raise NodeStartError(f"{self._node_name} was started without tls")
        return f"amqps://guest:guest@{HOST}:{self._tls_port}/"

    @property
    def plugin_ports(self) -> dict[str, int]:
        """Loopback ports of plugins with listeners, e.g. {"rabbitmq_management": 41234}."""
        return dict(self._plugin_ports)

    @property
    def node_name(self) -> str:
        return self._node_name

    @property
    def base_dir(self) -> str:
        return str(self._base)

    @property
    def log_dir(self) -> str:
        return str(self._base / "log")

    def __repr__(self) -> str:
        return f"<RabbitMQNode {self._node_name} {self.url} dir={self._base}>"

    # ------------------------------------------------------------------ CLI tools

    def _env(self) -> dict[str, str]:
        """What rabbitmq-server and the CLI tools must agree on (cookie via HOME, ports, paths)."""
        base = self._base
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) or key == "ERL_EPMD_PORT"
        }
        env.pop("XDG_CONFIG_HOME", None)  # another place a stray cookie could come from
        env.update(
            HOME=str(base),
            RABBITMQ_NODENAME=self._node_name,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self._port),
            RABBITMQ_DIST_PORT=str(self._dist_port),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=self.log_dir,
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(base / "node.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=_LOOPBACK_DIST_ARGS,
            RABBITMQ_CTL_ERL_ARGS=_LOOPBACK_DIST_ARGS,
            ERL_EPMD_ADDRESS=HOST,  # used when this node is the one that starts epmd
            ERL_CRASH_DUMP=str(base / "log" / "erl_crash.dump"),
        )
        if self._plugins_dir is not None:
            env["RABBITMQ_PLUGINS_DIR"] = str(self._plugins_dir)
        return env

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run `rabbitmqctl -n NODE ARGS` and return its stdout; RabbitmqctlError on failure."""
        return self._run_tool("rabbitmqctl", args, timeout, check)

    def plugins(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run `rabbitmq-plugins -n NODE ARGS`; only plugins passed to start() are available."""
        return self._run_tool("rabbitmq-plugins", args, timeout, check)

    def _run_tool(self, tool: str, args: Sequence[str], timeout: float, check: bool) -> str:
        command = [str(self._bin_dir / tool), "-n", self._node_name, *args]
        try:
            done = subprocess.run(
                command,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            out, err = (s.decode(errors="replace") if s else "" for s in (exc.stdout, exc.stderr))
            raise RabbitmqctlError(tool, args, None, out, err) from None
        except OSError as exc:  # e.g. RabbitMQ uninstalled since the node was started
            raise RabbitmqctlError(tool, args, 127, "", str(exc)) from None
        if check and done.returncode != 0:
            raise RabbitmqctlError(tool, args, done.returncode, done.stdout, done.stderr)
        return done.stdout

    def _ctl_json(self, *args: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ctl("--quiet", *args, "--formatter", "json"))
        return rows

    def is_running(self) -> bool:
        """Whether the node answers the CLI (`rabbitmqctl ping`)."""
        try:
            self.ctl("--quiet", "ping", timeout=15)
        except RabbitmqctlError:
            return False
        return True

    # ------------------------------------------------------------------ test helpers

    def add_user(
        self,
        name: str,
        password: str,
        *,
        vhost: str = "/",
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
    ) -> None:
        """Create a user with permissions on one vhost; "" as a regex grants nothing."""
        self.ctl("add_user", name, password)
        self.ctl("set_permissions", "-p", vhost, name, configure, write, read)

    def delete_user(self, name: str) -> None:
        self.ctl("delete_user", name)

    def list_users(self) -> list[dict[str, Any]]:
        """[{"user": ..., "tags": [...]}, ...]"""
        return self._ctl_json("list_users")

    def add_vhost(self, name: str, *, grant: str | None = "guest") -> None:
        """Create a vhost; `grant` gets full permissions there so node.url's user can use it."""
        self.ctl("add_vhost", name)
        if grant is not None:
            self.ctl("set_permissions", "-p", name, grant, ".*", ".*", ".*")

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name)

    def list_connections(self, *extra: str) -> list[dict[str, Any]]:
        """AMQP connections: name, user, vhost, state ("running", "blocked", ...) and
        client_properties as a dict (e.g. `["client_properties"]["connection_name"]`), plus
        the `extra` info items, e.g. "ssl", "ssl_protocol", "peer_cert_subject", "auth_mechanism"."""
        rows = self._ctl_json(
            "list_connections", "name", "user", "vhost", "state", "client_properties", *extra
        )
        for row in rows:
            row["client_properties"] = _amqp_table(row.get("client_properties"))
        return rows

    def close_all_connections(self, reason: str = "closed by test") -> None:
        """Close every client connection in every vhost (connection.close 320 with `reason`).

        The broker closes them asynchronously: this returns before clients have noticed.
        """
        self.ctl("close_all_connections", "--global", reason)

    def list_queues(self, vhost: str = "/") -> list[dict[str, Any]]:
        """Queues of one vhost: name, durable, auto_delete, messages (ready and
        unacknowledged) and consumers."""
        return self._ctl_json(
            "list_queues",
            "-p",
            vhost,
            "name",
            "durable",
            "auto_delete",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        )

    def set_vm_memory_high_watermark(self, value: float | str) -> None:
        """A fraction of RAM (0 blocks every publisher at once, 0.4 is the default) or an
        absolute amount such as "50MB"; used to provoke connection.blocked."""
        if isinstance(value, str) and not re.fullmatch(r"[0-9.]+", value):
            self.ctl("set_vm_memory_high_watermark", "absolute", value)
        else:
            self.ctl("set_vm_memory_high_watermark", str(value))

    # ------------------------------------------------------------------ logs

    def logs(self, lines: int = 60) -> str:
        """The last lines of the startup log and of every log file of the node."""
        log_dir = self._base / "log"
        files = [log_dir / _STARTUP_LOG]
        if log_dir.is_dir():
            files += sorted(p for p in log_dir.glob("*.log") if p.name != _STARTUP_LOG)
        parts = [f"==> {path} <==\n{text}" for path in files if (text := _tail(path, lines))]
        return "\n".join(parts) if parts else f"(no log output in {log_dir})"

    # ------------------------------------------------------------------ shutdown

    def stop(self, *, keep: bool = False, timeout: float = 30.0) -> None:
        """Stop the node gracefully (signals if the CLI fails or `timeout` passes) and delete
        base_dir unless keep.  Safe to call more than once.

        `rabbitmqctl stop` gets no pid file: the CLI would poll it only once a second, while
        watching the process group ourselves is about a second quicker.
        """
        if not self._begin_shutdown():
            return
        if self._alive() and not self._stop_with_ctl(timeout):
            self._stop_with_signals()
        if not keep:
            self._remove_base_dir()

    def terminate(self) -> None:
        """Stop without the CLI (SIGTERM, a graceful stop, to the process group, then SIGKILL)
        and delete base_dir: what start() failures and the atexit safety net use."""
        if not self._begin_shutdown():
            return
        self._stop_with_signals()
        self._remove_base_dir()

    def _begin_shutdown(self) -> bool:
        if self._stopped:
            return False
        self._stopped = True
        _LIVE_NODES.discard(self)
        return True

    def _stop_with_ctl(self, timeout: float) -> bool:
        try:
            self.ctl("stop", timeout=timeout)
        except RabbitmqctlError:
            return False
        return self._wait_gone(timeout)

    def _stop_with_signals(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if not self._alive():
                return
            self._signal_group(sig)
            self._wait_gone(grace)

    def detach(self) -> None:
        """Leave the node running after this process exits (stop it later via `attach()`)."""
        _LIVE_NODES.discard(self)

    def _alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is None:
            return True
        return self._pgid is not None and _group_alive(self._pgid)

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, sig)

    def _remove_base_dir(self) -> None:
        if (self._base / _MARKER).exists():
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class TLSRabbitMQ:
    """A node with a TLS listener and SASL EXTERNAL, and the certificates it was made with
    (what the `rabbitmq_tls` fixture gives)."""

    node: RabbitMQNode
    certs: TestCertificates

    @property
    def url(self) -> str:
        """The plain amqp:// URL of the node."""
        return self.node.url

    @property
    def tls_url(self) -> str:
        """amqps://guest:guest@127.0.0.1:TLSPORT/ (add ?cafile=... to verify the broker)."""
        return self.node.tls_url

    @property
    def tls_port(self) -> int:
        port = self.node.tls_port
        assert port is not None
        return port

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.node.ctl(*args, timeout=timeout, check=check)

    def add_user(self, name: str, password: str, **permissions: str) -> None:
        """`RabbitMQNode.add_user`: vhost, configure, write and read as keywords."""
        self.node.add_user(name, password, **permissions)

    def delete_user(self, name: str) -> None:
        self.node.delete_user(name)

    def list_connections(self, *extra: str) -> list[dict[str, Any]]:
        return self.node.list_connections(*extra)


def _write_cookie(path: Path, value: str | None = None) -> None:
    """The given cookie or a fresh random one, 0400: Erlang refuses cookies others can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as cookie:
        cookie.write(secrets.token_hex(20) if value is None else value)


def _prepare_base_dir(base_dir: str | None) -> Path:
    """A new temp dir, or the given one emptied: only if it is empty or an earlier node's."""
    if base_dir is None:
        base = Path(tempfile.mkdtemp(prefix="leveret-rabbitmq-"))
    else:
        base = Path(base_dir).absolute()
        if base.exists() and any(base.iterdir()):
            _reclaim(base)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / _MARKER).write_text("created by leveret.testing; deleted when the node stops\n")
    return base


def _reclaim(base: Path) -> None:
    if not (base / _MARKER).exists():
        raise NodeStartError(f"{base} is not empty and was not made by leveret.testing")
    try:
        previous: RabbitMQNode | None = RabbitMQNode.attach(str(base))
    except NodeStartError:  # no state file: it never got as far as launching
        previous = None
    if previous is not None and previous.is_running():
        raise NodeStartError(f"a node is still running in {base}; stop it first")
    shutil.rmtree(base)
