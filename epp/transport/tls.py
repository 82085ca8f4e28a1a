"""The TLS context of a gRPC listener: HTTP/2 over TLS as RFC 9113 section 9.2 requires it.

The gateways dial the EPP over TLS without verifying its certificate (kgateway's endpoint-picker
plugin builds an UpstreamTlsContext with an empty validation context), so the server side is all
that matters here: TLS 1.2 or newer, AEAD ciphers with forward secrecy for TLS 1.2 (RFC 9113 9.2.2
prohibits the rest), no renegotiation, and ALPN ``h2``. A client that offers no ALPN is served
with HTTP/2 by prior knowledge; one that negotiates another protocol is refused.
"""

from __future__ import annotations

import ssl
from pathlib import Path

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(str(cert_file), str(key_file))
    return context
