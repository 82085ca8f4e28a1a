"""TLS for the ext_proc port, the way upstream EPPs serve it.

Gateways dial the EPP over TLS without verifying it (kgateway's endpoint-picker plugin builds the
ext_proc cluster with an upstream TLS context and no validation; GIE's Istio template adds a
DestinationRule with ``insecureSkipVerify``), and upstream EPPs serve TLS by default
(``--secure-serving=true``). So, as upstream:

* without ``--cert-path`` the EPP makes a self-signed certificate at start (GIE's
  ``CreateSelfSignedTLSCertificate``: organisation "Inference Ext", server-auth usage, valid ten
  years; GIE uses RSA-4096, this uses ECDSA P-256, which Envoy accepts and which takes
  milliseconds instead of seconds to generate);
* with ``--cert-path DIR`` it loads ``DIR/tls.crt`` and ``DIR/tls.key`` (a mounted
  ``kubernetes.io/tls`` Secret, e.g. from cert-manager);
* with ``--enable-cert-reload`` (upstream's flag) it picks up a renewed pair without a restart:
  Kubernetes replaces a Secret volume's files by swapping a symlink, so the pair is re-read when
  either resolved file changes, checked to match, and only then used for new connections. A
  broken renewal keeps the previous pair and is logged and counted.

Each transport serves the pair its own way: grpc.aio asks ``CertificateSource.changed()`` before
each handshake (dynamic credentials); the h2 transport gets :class:`ReloadingSslContext`, one
``ssl.SSLContext`` per certificate generation handed to new handshakes by an SNI callback, with the
files checked by a task off the event loop thread.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from epp.transport.tls import server_ssl_context

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
SELF_SIGNED_ORGANIZATION = "Inference Ext"  # what GIE's self-signed certificate says
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)


class TlsError(ValueError):
    """A certificate/key pair that cannot serve TLS (missing, unreadable, malformed, mismatched)."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes
    origin: str  # "self-signed" or the certificate's path, for logs


def self_signed(now: datetime.datetime | None = None) -> KeyPair:
    issued = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORGANIZATION)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued)
        .not_valid_after(issued + SELF_SIGNED_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        origin="self-signed",
    )


def check_pair(pair: KeyPair) -> None:
    """Raise TlsError unless the pair loads into a TLS server context (PEM valid, key matches)."""
    _with_files(pair, lambda cert, key: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key))


def h2_ssl_context(pair: KeyPair) -> ssl.SSLContext:
    """The h2 transport's server context (TLS 1.2+, ALPN h2: ``epp.transport.tls``) serving ``pair``."""
    return _with_files(pair, server_ssl_context)


def _with_files(pair: KeyPair, load: Callable[[Path, Path], _T]) -> _T:
    # ssl loads chains from files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="epp-tls-") as scratch:
        cert, key = Path(scratch, CERT_FILE), Path(scratch, KEY_FILE)
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        os.chmod(key, 0o600)
        try:
            return load(cert, key)
        except (ssl.SSLError, ValueError) as error:
            raise TlsError(f"{pair.origin}: not a usable certificate/key pair ({error})") from None


def load_pair(directory: Path) -> KeyPair:
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    try:
        pair = KeyPair(cert.read_bytes(), key.read_bytes(), str(cert))
    except OSError as error:
        raise TlsError(f"--cert-path: cannot read {error.filename}: {error.strerror}") from None
    check_pair(pair)
    return pair


class CertificateSource:
    """The key pair the ext_proc port serves, re-read on change when reloading is on.

    ``changed()`` is cheap enough to call on every new connection: it stats the two files at most
    once per ``check_interval`` seconds. Thread-safe (gRPC core asks from its own threads)."""

    def __init__(
        self,
        cert_dir: Path | None,
        *,
        reload: bool = False,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload_error: Callable[[TlsError], None] | None = None,
    ) -> None:
        if reload and cert_dir is None:
            raise TlsError(
                "--enable-cert-reload needs --cert-path (a self-signed certificate is never renewed)"
            )
        self.cert_dir = cert_dir
        self.reload = reload
        self.check_interval = check_interval
        self._clock = clock
        self._on_reload_error = on_reload_error
        self._lock = threading.Lock()
        self._pair = self_signed() if cert_dir is None else load_pair(cert_dir)
        self._stamp = self._file_stamp()
        self._next_check = clock() + check_interval
        self.generation = 0  # bumped on every successful reload

    @property
    def pair(self) -> KeyPair:
        return self._pair

    def changed(self) -> KeyPair | None:
        """The new pair if the files changed (and are valid) since the last look, else None."""
        if not self.reload:
            return None
        now = self._clock()
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + self.check_interval
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            assert self.cert_dir is not None
            try:
                pair = load_pair(self.cert_dir)
            except TlsError as error:
                log.error("certificate reload failed, still serving the previous one: %s", error)
                if self._on_reload_error is not None:
                    self._on_reload_error(error)
                return None
            self._pair = pair
            self.generation += 1
            log.info("reloaded the serving certificate from %s", self.cert_dir)
            return pair

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        if self.cert_dir is None:
            return ()
        stamps = []
        for name in (CERT_FILE, KEY_FILE):
            try:
                info = (self.cert_dir / name).stat()  # follows the Secret volume's ..data symlink
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)


class ReloadingSslContext:
    """TLS for the h2 transport's listener, following a :class:`CertificateSource`.

    asyncio fixes a listener's ``ssl.SSLContext`` when it starts, so the listener gets
    ``listener_context`` and, with reloading on, an SNI callback on it: OpenSSL calls it for every
    ClientHello (with or without a server name) and it hands the handshake the context of the newest
    certificate generation. ``watch()`` checks the files every ``check_interval`` seconds in a worker
    thread (stat, and read + verify on a change), so the event loop never waits on the filesystem,
    and a connection already open keeps the certificate it was served.
    """

    def __init__(self, source: CertificateSource) -> None:
        self.source = source
        self.listener_context = h2_ssl_context(source.pair)
        self.current = self.listener_context
        if source.reload:
            self.listener_context.sni_callback = self._pick

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, offered: ssl.SSLContext) -> None:
        current = self.current
        if current is not offered:
            connection.context = current

    async def watch(self) -> None:
        """Runs until cancelled; a no-op when reloading is off."""
        if not self.source.reload:
            return
        while True:
            await asyncio.sleep(self.source.check_interval)
            renewed = await asyncio.to_thread(self.source.changed)
            if renewed is None:
                continue
            try:
                self.current = await asyncio.to_thread(h2_ssl_context, renewed)
            except TlsError as error:  # checked by the source already; a race with a second swap
                log.error("could not serve the reloaded certificate, keeping the previous one: %s", error)
