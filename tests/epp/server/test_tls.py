"""TLS on the ext_proc port: self-signed by default, a mounted pair, and reload of a renewed pair
(Kubernetes swaps a Secret volume's ``..data`` symlink) for new connections without a restart."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from epp.cli import parse_args
from epp.server import EppServer, ServerMetrics, ServerOptions, Transport
from epp.server.tls import SELF_SIGNED_ORGANIZATION, CertificateSource, KeyPair, TlsError, self_signed
from localrun import free_port
from tests.support.extproc import ScriptedDirector, body_msg, request_headers

BODY = b'{"model":"m","prompt":"hello"}'


def localhost_pair(common_name: str) -> KeyPair:
    """A pair a verifying client accepts for "localhost" (the EPP's own self-signed one has no name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        common_name,
    )


def mount(volume: Path, pair: KeyPair, generation: int) -> Path:
    """Write ``pair`` the way the kubelet updates a Secret volume: a new timestamped directory, then
    an atomic swap of the ``..data`` symlink that tls.crt and tls.key point through."""
    target = volume / f"..{generation}"
    target.mkdir()
    (target / "tls.crt").write_bytes(pair.cert_pem)
    (target / "tls.key").write_bytes(pair.key_pem)
    link = volume / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, volume / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    return volume


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_self_signed_pair_is_what_upstream_makes_and_serves_tls() -> None:
    pair = self_signed()
    certificate = x509.load_pem_x509_certificate(pair.cert_pem)
    organization = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in organization] == [SELF_SIGNED_ORGANIZATION]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=3649)
    assert CertificateSource(None).pair.origin == "self-signed"


def test_a_mounted_pair_is_loaded_and_checked(tmp_path: Path) -> None:
    pair = localhost_pair("a")
    source = CertificateSource(mount(tmp_path, pair, 1))
    assert source.pair.cert_pem == pair.cert_pem


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing-key", "cannot read"),
        ("other-key", "not a usable certificate/key pair"),
        ("garbage", "not a usable certificate/key pair"),
    ],
)
def test_a_bad_pair_is_refused_with_the_file_named(tmp_path: Path, damage: str, message: str) -> None:
    pair, other = localhost_pair("a"), localhost_pair("b")
    (tmp_path / "tls.crt").write_bytes(b"not a certificate" if damage == "garbage" else pair.cert_pem)
    if damage == "other-key":
        (tmp_path / "tls.key").write_bytes(other.key_pem)
    elif damage == "garbage":
        (tmp_path / "tls.key").write_bytes(pair.key_pem)
    with pytest.raises(TlsError, match=message):
        CertificateSource(tmp_path)


def test_reload_follows_a_secret_volume_swap_and_rate_limits_its_checks(tmp_path: Path) -> None:
    first, second = localhost_pair("first"), localhost_pair("second")
    clock, errors = Clock(), []
    source = CertificateSource(
        mount(tmp_path, first, 1), reload=True, check_interval=5.0, clock=clock, on_reload_error=errors.append
    )
    assert source.changed() is None  # nothing changed, and the first check waits for the interval
    mount(tmp_path, second, 2)
    assert source.changed() is None  # within the interval: no file is even looked at
    clock.now = 5.0
    renewed = source.changed()
    assert renewed is not None and renewed.cert_pem == second.cert_pem
    assert source.pair.cert_pem == second.cert_pem and source.generation == 1
    clock.now = 10.0
    assert source.changed() is None  # unchanged files: no reload

    # A renewal whose key does not match its certificate keeps the working pair.
    broken = KeyPair(first.cert_pem, second.key_pem, "broken")
    mount(tmp_path, broken, 3)
    clock.now = 15.0
    assert source.changed() is None
    assert source.pair.cert_pem == second.cert_pem and len(errors) == 1


def test_without_reload_the_files_are_never_read_again(tmp_path: Path) -> None:
    first = localhost_pair("first")
    source = CertificateSource(mount(tmp_path, first, 1), check_interval=0.0)
    mount(tmp_path, localhost_pair("second"), 2)
    assert source.changed() is None and source.pair.cert_pem == first.cert_pem


def test_reload_needs_a_cert_path() -> None:
    with pytest.raises(TlsError, match="--enable-cert-reload needs --cert-path"):
        CertificateSource(None, reload=True)


def test_cli_serves_tls_by_default_and_names_bad_combinations(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("endpoints: []\n")
    _, options, _ = parse_args(["--endpoints-file", str(endpoints)])
    assert options.tls is not None and options.tls.pair.origin == "self-signed"
    _, options, _ = parse_args(["--endpoints-file", str(endpoints), "--secure-serving=false"])
    assert options.tls is None
    for argv, message in (
        (["--enable-cert-reload"], "--enable-cert-reload needs --cert-path"),
        (["--cert-path", str(tmp_path / "absent")], "cannot read"),
        (["--secure-serving=false", "--cert-path", str(tmp_path)], "need --secure-serving"),
    ):
        with pytest.raises(SystemExit) as exited:
            parse_args(["--endpoints-file", str(endpoints), *argv])
        assert exited.value.code == 2, message


async def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to ``port`` is served (no verification, ALPN h2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "h2"
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.transport.abort()  # the server has already sent its HTTP/2 preface: no clean shutdown


def der(pair: KeyPair) -> bytes:
    return x509.load_pem_x509_certificate(pair.cert_pem).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("transport", list(Transport), ids=[t.value for t in Transport])
async def test_ext_proc_over_tls_probes_in_plaintext_and_renewed_pairs_to_new_connections(
    tmp_path: Path, director: ScriptedDirector, transport: Transport
) -> None:
    first, second = localhost_pair("first"), localhost_pair("second")
    clock = Clock()
    # h2 checks the files every check_interval seconds of real time, in a worker thread.
    source = CertificateSource(mount(tmp_path, first, 1), reload=True, check_interval=0.05, clock=clock)
    ports = {"grpc_port": free_port(), "grpc_health_port": free_port(), "metrics_port": free_port()}
    options = ServerOptions(host="127.0.0.1", tls=source, transport=transport, **ports)
    server = EppServer(director, options, ServerMetrics(CollectorRegistry()))
    await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=first.cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{options.grpc_port}", credentials) as channel:
            call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
            await call.write(request_headers())
            await call.write(body_msg(BODY))
            assert (await call.read()).request_headers.response.clear_route_cache
            await call.done_writing()
        # Kubelet probes cannot speak TLS: the health port stays cleartext.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{options.grpc_health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness")
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await served_certificate(options.grpc_port) == der(first)

        mount(tmp_path, second, 2)
        clock.now = 1.0  # the next check may look at the files
        async with asyncio.timeout(30):  # hang guard: grpc.aio checks at the next handshake, h2 soon
            while await served_certificate(options.grpc_port) != der(second):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        credentials = grpc.ssl_channel_credentials(root_certificates=second.cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{options.grpc_port}", credentials) as channel:
            call = ext_proc_grpc.ExternalProcessorStub(channel).Process()
            await call.write(request_headers())
            await call.write(body_msg(BODY))
            assert (await call.read()).request_headers.response.clear_route_cache
            await call.done_writing()
    finally:
        await server.stop(grace=0)
