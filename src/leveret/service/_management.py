"""Create a missing vhost and a user's permissions through RabbitMQ's management HTTP API.

Why: AMQP cannot create vhosts or grant permissions, so a fresh broker (a
developer machine, a CI job) needs `rabbitmqctl` or the management UI before a
service can connect. With the `rabbitmq_management` plugin enabled, this does
it from Python, idempotently:

    setup = await ensure_vhost("http://admin:secret@rabbit:15672/", "orders", user="orders")

Standard library only: `urllib.request` in a worker thread. Every failure is a
`ManagementError` that says what to fix (the admin credentials, the plugin or
its port, the user's name).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from leveret._url import parse_url
from leveret.exceptions import LeveretError

__all__ = ["ManagementError", "VhostSetup", "ensure_vhost", "ensure_vhost_for", "management_url"]

DEFAULT_PORT = 15672
DEFAULT_TLS_PORT = 15671


class ManagementError(LeveretError):
    """The management API could not do what was asked; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


@dataclass(frozen=True, slots=True)
class VhostSetup:
    """What `ensure_vhost` changed: both False when everything was already in place."""

    vhost_created: bool
    permissions_changed: bool


def management_url(amqp_url: str, *, port: int | None = None) -> str:
    """The management API's URL for the broker of `amqp_url`: same host and credentials,
    http on 15672 (https on 15671 for amqps://) unless `port` says otherwise."""
    params = parse_url(amqp_url)
    if port is None:
        port = DEFAULT_TLS_PORT if params.use_tls else DEFAULT_PORT
    _check_port(port)
    scheme = "https" if params.use_tls else "http"
    host = f"[{params.host}]" if ":" in params.host else params.host
    credentials = f"{quote(params.username, safe='')}:{quote(params.password, safe='')}"
    return f"{scheme}://{credentials}@{host}:{port}/"


async def ensure_vhost(
    url: str,
    vhost: str,
    *,
    user: str | None = None,
    configure: str = ".*",
    write: str = ".*",
    read: str = ".*",
    admin_user: str | None = None,
    admin_password: str | None = None,
    timeout: float = 10.0,
) -> VhostSetup:
    """Create `vhost` unless it exists and, when `user` is given, grant that user the
    `configure`/`write`/`read` permission patterns on it unless it already has exactly those.

    `url` is the management API's base URL (see `management_url`); the admin credentials
    come from its user info unless `admin_user`/`admin_password` are given (default
    guest/guest). Safe to call on every start: a second call changes nothing.
    """
    api = _Api(url, admin_user, admin_password, timeout)
    if not isinstance(vhost, str) or not vhost:
        raise ValueError(f"vhost must be a non-empty str, got {vhost!r}")
    if user is not None and (not isinstance(user, str) or not user):
        raise ValueError(f"user must be a non-empty str or None, got {user!r}")
    wanted = {"configure": configure, "write": write, "read": read}
    for what, pattern in wanted.items():
        if not isinstance(pattern, str):
            raise TypeError(f"{what} must be a str (a regular expression), got {pattern!r}")
    return await asyncio.to_thread(_ensure, api, vhost, user, wanted)


async def ensure_vhost_for(
    amqp_url: str,
    *,
    api_url: str | None = None,
    configure: str = ".*",
    write: str = ".*",
    read: str = ".*",
    admin_user: str | None = None,
    admin_password: str | None = None,
    timeout: float = 10.0,
) -> VhostSetup:
    """What the application's `amqp_url` needs before it can connect: its vhost, and its
    user's permissions there. The API is `api_url` or, by default, `management_url(amqp_url)`
    (same host, port 15672); the admin is `admin_user`/`admin_password`, else the one in
    `api_url`, else the URL's own user (fine on a development broker, where it is guest).

        await ensure_vhost_for("amqp://orders:secret@rabbit/orders",
                               admin_user="admin", admin_password=os.environ["ADMIN_PW"])
    """
    params = parse_url(amqp_url)
    return await ensure_vhost(
        api_url if api_url is not None else management_url(amqp_url),
        params.virtual_host,
        user=params.username,
        configure=configure,
        write=write,
        read=read,
        admin_user=admin_user,
        admin_password=admin_password,
        timeout=timeout,
    )


def _ensure(api: _Api, vhost: str, user: str | None, wanted: dict[str, str]) -> VhostSetup:
    path = f"vhosts/{quote(vhost, safe='')}"
    created = False
    if api.request("GET", path, missing_ok=True) is None:
        api.request("PUT", path, {})
        created = True
    if user is None:
        return VhostSetup(created, False)
    if api.request("GET", f"users/{quote(user, safe='')}", missing_ok=True) is None:
        raise ManagementError(
            f"user {user!r} does not exist on the broker at {api.shown}; create it first "
            f"(rabbitmqctl add_user {user} PASSWORD)",
            status=404,
            url=api.shown,
        )
    path = f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
    current = api.request("GET", path, missing_ok=True)
    if isinstance(current, dict) and all(current.get(k) == v for k, v in wanted.items()):
        return VhostSetup(created, False)
    api.request("PUT", path, wanted)
    return VhostSetup(created, True)


class _Api:
    """The few HTTP calls needed, with errors turned into ManagementError."""

    def __init__(self, url: str, user: str | None, password: str | None, timeout: float) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"management url must be http(s)://[user:pass@]host:port/, got {url!r} "
                "(for an amqp:// URL use management_url(amqp_url))"
            )
        try:
            port = parts.port or (DEFAULT_TLS_PORT if parts.scheme == "https" else DEFAULT_PORT)
        except ValueError:
            raise ValueError(f"management url {url!r} has a bad port") from None
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.user = user if user is not None else unquote(parts.username or "guest")
        password = password if password is not None else unquote(parts.password or "guest")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        path = parts.path.rstrip("/")
        self.base = f"{parts.scheme}://{host}:{port}{path}/api/"
        self.shown = f"{parts.scheme}://{host}:{port}{path}/"
        token = base64.b64encode(f"{self.user}:{password}".encode()).decode("ascii")
        self.headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.timeout = float(timeout)
        self.host, self.port = parts.hostname, port

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, missing_ok: bool = False
    ) -> Any:
        """The decoded JSON answer ({} when there is none); None for a 404 when `missing_ok`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, headers=self.headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise self._http_error(method, path, exc.code, _reason(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
        return json.loads(text) if text.strip() else {}

    def _http_error(self, method: str, path: str, status: int, reason: str) -> ManagementError:
        if status == 401:
            message = (
                f"the management API at {self.shown} refused the admin credentials of user "
                f"{self.user!r} ({reason}): wrong user name or password, or the user lacks the "
                "administrator tag"
            )
        else:
            message = f"{method} {self.shown}api/{path} failed with HTTP {status}: {reason}"
        return ManagementError(message, status=status, url=self.shown)

    def _unreachable(self, exc: BaseException) -> ManagementError:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            message = (
                f"nothing listens at {self.host}:{self.port}: is the rabbitmq_management plugin "
                "enabled (rabbitmq-plugins enable rabbitmq_management) and is this its port?"
            )
        elif isinstance(reason, TimeoutError | socket.timeout):
            message = f"no answer from the management API at {self.shown} within {self.timeout}s"
        else:
            message = f"cannot reach the management API at {self.shown}: {reason}"
        return ManagementError(message, url=self.shown)


def _reason(exc: urllib.error.HTTPError) -> str:
    """The API's own explanation ({"error": ..., "reason": ...}) when it sent one."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return str(exc.reason)
    if isinstance(body, dict) and body.get("reason"):
        return str(body["reason"])
    return str(exc.reason)


def _check_port(port: object) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port must be an int from 1 to 65535, got {port!r}")
