"""amqp:// and amqps:// URLs, parsed once into frozen connection parameters.

Follows RabbitMQ's URI spec: the vhost is the percent-decoded path without
its leading slash (`/%2f` is the vhost "/", an empty path is "/" too), and
query parameters tune the connection. Every bad value raises ValueError
naming the URL (with the password hidden) and the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import ssl

__all__ = ["ConnectionParameters", "parse_url"]

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_TRUE = {"1", "true", "yes", "on", "required"}
_FALSE = {"0", "false", "no", "off", "none"}
_FIELD_FOR_QUERY = {
    "connect_timeout": "connection_timeout",
    "verify_peer": "verify",
    "name": "connection_name",
}


@dataclass(frozen=True, slots=True)
class ConnectionParameters:
    """Where and how to connect; build with `parse_url` or directly."""

    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    heartbeat: int | None = 60
    connection_timeout: float = 10.0
    frame_max: int = 131072
    channel_max: int = 2047
    use_tls: bool = False
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    server_hostname: str | None = None
    auth_mechanism: str = "PLAIN"
    connection_name: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)

    def with_options(self, **changes: object) -> ConnectionParameters:
        """A copy with some fields changed (keyword arguments of `connect` override the URL)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def display(self) -> str:
        """The URL without the password, for logs and error messages."""
        scheme = "amqps" if self.use_tls else "amqp"
        vhost = "%2F" if self.virtual_host == "/" else self.virtual_host
        user = f"{self.username}@" if self.username else ""  # none with EXTERNAL
        return f"{scheme}://{user}{self.host}:{self.port}/{vhost}"

    def connect_error_message(self, exc: OSError) -> str:
        """Why the TCP or TLS connection failed, with a hint for the usual TLS mistakes."""
        import ssl  # already loaded when the error is a TLS one

        where = f"could not connect to {self.display()}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"{where}: TLS certificate verification failed: {exc.verify_message} "
                "(check cafile and server_hostname, or set verify=false to skip verification)"
            )
        if isinstance(exc, ssl.SSLError):
            hint = ""
            if exc.reason == "WRONG_VERSION_NUMBER":
                hint = f" (is {self.host}:{self.port} a TLS port? amqps:// needs the TLS listener)"
            return f"{where}: TLS handshake failed: {exc}{hint}"
        return f"{where}: {exc}"

    def make_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to use, built from cafile/certfile/keyfile/verify when none is given."""
        if not self.use_tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        import ssl  # here, so that importing leveret alone loads no TLS machinery

        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_url(url: str) -> ConnectionParameters:
    """Parse an amqp(s):// URL; raises ValueError naming the bad part."""
    if not isinstance(url, str):
        raise TypeError(f"URL must be a str, got {type(url).__name__}: {url!r}")
    shown = _redact(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"URL {shown!r}: scheme must be amqp or amqps, got {parts.scheme!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"URL {shown!r}: invalid port ({exc})") from None
    host = parts.hostname or "localhost"
    path = parts.path
    if path.startswith("/"):
        path = path[1:]
    if "/" in path:
        raise ValueError(f"URL {shown!r}: a vhost containing '/' must be written as %2F")
    vhost = unquote(path) if path else "/"
    params = ConnectionParameters(
        host=host,
        port=port,
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        virtual_host=vhost,
        use_tls=scheme == "amqps",
    )
    changes: dict[str, object] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        changes[_FIELD_FOR_QUERY.get(key, key)] = _query_value(shown, key, value)
    if (
        "auth_mechanism" in changes
        and changes["auth_mechanism"] == "EXTERNAL"
        and parts.username is None
    ):
        changes.setdefault("username", "")
    return params.with_options(**changes) if changes else params


def _query_value(shown: str, key: str, value: str) -> object:
    def number(kind: type[int] | type[float], low: float, high: float) -> int | float:
        try:
            parsed = kind(value)
        except ValueError:
            raise ValueError(f"URL {shown!r}: {key} must be a number, got {value!r}") from None
        if not low <= parsed <= high:
            raise ValueError(
                f"URL {shown!r}: {key} must be between {low} and {high}, got {value!r}"
            )
        return parsed

    def flag() -> bool:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"URL {shown!r}: {key} must be true or false, got {value!r}")

    if key == "heartbeat":
        return int(number(int, 0, 65535))
    if key in ("connection_timeout", "connect_timeout"):
        return float(number(float, 0.001, 3600))
    if key == "frame_max":
        frame_max = int(number(int, 0, 2**32 - 1))
        if 0 < frame_max < 4096:
            raise ValueError(f"URL {shown!r}: frame_max must be 0 or at least 4096, got {value!r}")
        return frame_max
    if key == "channel_max":
        return int(number(int, 0, 65535))
    if key in ("cafile", "certfile", "keyfile", "server_hostname"):
        return value
    if key in ("verify", "verify_peer"):
        return flag()
    if key == "auth_mechanism":
        mechanism = value.upper()
        if mechanism not in ("PLAIN", "EXTERNAL"):
            raise ValueError(
                f"URL {shown!r}: auth_mechanism must be PLAIN or EXTERNAL, got {value!r}"
            )
        return mechanism
    if key in ("name", "connection_name"):
        return value
    raise ValueError(
        f"URL {shown!r}: unknown query parameter {key!r} (known: heartbeat, connection_timeout, "
        "frame_max, channel_max, cafile, certfile, keyfile, verify, server_hostname, "
        "auth_mechanism, name)"
    )
