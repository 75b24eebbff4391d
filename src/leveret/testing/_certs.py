"""Throwaway X.509 certificates for TLS tests, made with the `openssl` command line.

Stdlib only: the `cryptography` package would be a heavy dependency for a test helper,
and every machine that runs RabbitMQ has openssl.  RSA 2048 and SHA-256 throughout,
which both Erlang/OTP and Python's ssl module accept at their default security levels.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateError", "TLSFiles", "TestCertificates", "make_test_certificates"]

CLIENT_USER = "leveret-tls-user"
UNKNOWN_CLIENT_USER = "leveret-tls-nobody"
_DAYS = "3650"
_MESSAGE_LINES = 40

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = {cn}
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
O = leveret tests
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
{san}
"""


class CertificateError(RuntimeError):
    """openssl is missing or one of its commands failed; the message has its output."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """What a TLS server needs: the CA to verify clients with, its certificate and key (PEM)."""

    cacert: str
    cert: str
    key: str

    def __post_init__(self) -> None:
        for name in ("cacert", "cert", "key"):
            path = getattr(self, name)
            if not Path(path).is_file():
                raise FileNotFoundError(f"TLSFiles.{name}: no such file: {path}")


@dataclass(frozen=True, slots=True)
class TestCertificates:
    """Paths of the PEM files `make_test_certificates` wrote.

    ca_cert signed the server certificate (for 127.0.0.1 and localhost) and both client
    certificates; other_ca_cert is a second CA that signed nothing, for "wrong CA" tests.
    client_cert's common name is client_user; unknown_client_cert's is unknown_client_user,
    a name to leave without a broker user.  untrusted_client_cert has client_user's name
    but other_ca_cert signed it, so a broker trusting only ca_cert must refuse it.
    """

    __test__ = False  # not a pytest test class, despite the name

    directory: str
    ca_cert: str
    other_ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_user: str
    unknown_client_cert: str
    unknown_client_key: str
    unknown_client_user: str
    untrusted_client_cert: str
    untrusted_client_key: str

    @property
    def server(self) -> TLSFiles:
        """What `RabbitMQNode.start(tls=...)` takes."""
        return TLSFiles(cacert=self.ca_cert, cert=self.server_cert, key=self.server_key)


def make_test_certificates(directory: str | os.PathLike[str]) -> TestCertificates:
    """Write two CAs, a server certificate and client certificates into `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("the openssl command is needed to make test certificates")
    out = Path(directory).absolute()
    out.mkdir(parents=True, exist_ok=True)
    tool = _OpenSSL(openssl, out)
    tool.keys("ca", "other-ca", "server", "client", "unknown-client", "untrusted-client")
    tool.ca("ca", "leveret test CA")
    tool.ca("other-ca", "leveret untrusted test CA")
    tool.leaf("server", "127.0.0.1", "ca", server=True)
    tool.leaf("client", CLIENT_USER, "ca")
    tool.leaf("unknown-client", UNKNOWN_CLIENT_USER, "ca")
    tool.leaf("untrusted-client", CLIENT_USER, "other-ca")
    for scratch in out.glob("*.cnf"):
        scratch.unlink()
    for scratch in out.glob("*.csr"):
        scratch.unlink()

    def pem(name: str) -> str:
        return str(out / name)

    return TestCertificates(
        directory=str(out),
        ca_cert=pem("ca.pem"),
        other_ca_cert=pem("other-ca.pem"),
        server_cert=pem("server.pem"),
        server_key=pem("server.key"),
        client_cert=pem("client.pem"),
        client_key=pem("client.key"),
        client_user=CLIENT_USER,
        unknown_client_cert=pem("unknown-client.pem"),
        unknown_client_key=pem("unknown-client.key"),
        unknown_client_user=UNKNOWN_CLIENT_USER,
        untrusted_client_cert=pem("untrusted-client.pem"),
        untrusted_client_key=pem("untrusted-client.key"),
    )


class _OpenSSL:
    def __init__(self, executable: str, directory: Path) -> None:
        self._openssl = executable
        self._dir = directory

    def keys(self, *names: str) -> None:
        """RSA keys, generated in parallel: finding primes is most of the time this takes."""
        running = [
            (name, self._start("genpkey", "-algorithm", "RSA", "-pkeyopt",
                               "rsa_keygen_bits:2048", "-out", f"{name}.key"))
            for name in names
        ]  # fmt: skip
        for _name, (command, proc) in running:
            stdout, stderr = proc.communicate(timeout=60)
            self._check(command, proc.returncode, stdout + stderr)
        for name in names:
            (self._dir / f"{name}.key").chmod(0o600)

    def ca(self, name: str, common_name: str) -> None:
        config = self._config(name, _CA_CONFIG.format(cn=common_name))
        self._run(
            "req", "-x509", "-config", config, "-key", f"{name}.key", "-sha256",
            "-days", _DAYS, "-set_serial", _serial(), "-out", f"{name}.pem",
        )  # fmt: skip

    def leaf(self, name: str, common_name: str, issuer: str, *, server: bool = False) -> None:
        san = "subjectAltName = IP:127.0.0.1, IP:::1, DNS:localhost" if server else ""
        usage = "serverAuth" if server else "clientAuth"
        config = self._config(name, _LEAF_CONFIG.format(cn=common_name, usage=usage, san=san))
        self._run(
            "req", "-new", "-config", config, "-key", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        self._run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem",
            "-CAkey", f"{issuer}.key", "-set_serial", _serial(), "-days", _DAYS,
            "-sha256", "-extfile", config, "-extensions", "leaf", "-out", f"{name}.pem",
        )  # fmt: skip

    def _config(self, name: str, text: str) -> str:
        path = self._dir / f"{name}.cnf"
        path.write_text(text)
        return path.name

    def _start(self, *args: str) -> tuple[list[str], subprocess.Popen[str]]:
        command = [self._openssl, *args]
        proc = subprocess.Popen(
            command,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OPENSSL_CONF": os.devnull},  # no system config surprises
        )
        return command, proc

    def _run(self, *args: str) -> None:
        command, proc = self._start(*args)
        stdout, stderr = proc.communicate(timeout=60)
        self._check(command, proc.returncode, stdout + stderr)

    @staticmethod
    def _check(command: list[str], returncode: int, output: str) -> None:
        if returncode != 0:
            tail = "\n".join(output.splitlines()[-_MESSAGE_LINES:])
            raise CertificateError(
                f"{shlex.join(command)} failed with exit code {returncode}:\n{tail}"
            )


def _serial() -> str:
    return f"0x{secrets.randbits(63) | 1 << 62:x}"
