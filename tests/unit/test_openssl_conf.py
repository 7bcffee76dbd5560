"""OPENSSL_CONF is set by the library itself, before cryptography loads OpenSSL, with or without the CLI.

FFmpeg's WHIP muxer presents a P-224 ECDSA certificate; an OpenSSL (D)TLS 1.2 client refuses a server certificate
whose curve is not in its groups list. Each case runs in a fresh interpreter (OpenSSL reads its config once per
process): it imports what an application embedding webrtc-cast would import, then completes a TLS 1.2 handshake
in memory with a P-224 server certificate. With the library's settings overridden by an empty OPENSSL_CONF the
same handshake must fail, so the test sees the difference the setting makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

HANDSHAKE = textwrap.dedent(
    """
    import datetime, sys
    {imports}
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL, crypto

    key = ec.generate_private_key(ec.SECP224R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-like")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    server_ctx.use_certificate(crypto.X509.from_cryptography(cert))
    server_ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    client_ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    server, client = SSL.Connection(server_ctx), SSL.Connection(client_ctx)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                print("handshake failed:", exc)
                sys.exit(3)
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    ok = client.get_cipher_name() is not None and server.get_cipher_name() is not None
    print("handshake", "ok" if ok else "incomplete")
    sys.exit(0 if ok else 4)
    """
)


def _run(imports: str, env_conf: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    if env_conf is not None:
        env["OPENSSL_CONF"] = env_conf
    code = HANDSHAKE.replace("{imports}", imports)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "imports",
    [
        "import webrtc_cast.app",  # the composition root, as an embedding application would use it
        "from webrtc_cast.sfu_tree.aiortc_glue import PeerTransport",  # the glue alone
        "from webrtc_cast.sfu_tree.negotiate import *",  # the core, no signaling
    ],
)
def test_p224_server_certificate_accepted_without_the_cli(imports: str) -> None:
    result = _run(imports, None)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_library_settings_the_same_handshake_fails(tmp_path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty.cnf"
    empty.write_text("")
    result = _run("import webrtc_cast.app", str(empty))  # an operator's OPENSSL_CONF wins over ours
    assert result.returncode == 3, result.stdout + result.stderr
