"""Unit tests of the TLS side of module_utils/_http.py: loading CA and client certificates, server_name,
and how TLS failures are described. Real certificates (made here with `cryptography`, which
ansible-core depends on) and real handshakes over an in-process socket pair; no network.

`make_pki` is also used by the integration tests' HTTPS servers.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from ansible_collections.safedeploy.django.plugins.module_utils._http import (
    TlsOptions,
    build_tls_context,
    describe_transport_error,
)


def make_pki(directory: Path) -> dict[str, str]:
    """A test CA, server certificates and client certificates, as PEM files in ``directory``.

    ca: the test CA; server: for 127.0.0.1 and localhost; shop: for shop.example only;
    client (+ client_key, client_combined with both): signed by the CA; rogue_client: signed by
    another CA; client_key_encrypted: the client key with a passphrase; expired_client: expired.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, str] = {}

    def write(name: str, data: bytes) -> str:
        path = directory / name
        path.write_bytes(data)
        files[name.split(".")[0]] = str(path)
        return str(path)

    def key_pem(key, password: bytes | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def cert(subject: str, key, issuer=None, issuer_key=None, *, ca=False, sans=(), client=False,
             not_after=None):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(not_after or now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                            critical=False)
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer_key or key).public_key()), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def pem(certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("safedeploy test CA", ca_key, ca=True)
    write("ca.pem", pem(ca))
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = cert("rogue CA", rogue_key, ca=True)

    for name, sans in (
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        ("shop", [x509.DNSName("shop.example")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write(f"{name}.pem", pem(cert(name, key, ca, ca_key, sans=sans)))
        write(f"{name}_key.pem", key_pem(key))

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = cert("health-client", client_key, ca, ca_key, client=True)
    write("client.pem", pem(client))
    write("client_key.pem", key_pem(client_key))
    write("client_combined.pem", pem(client) + key_pem(client_key))
    write("client_key_encrypted.pem", key_pem(client_key, b"passphrase"))
    write("expired_client.pem", pem(cert("expired-client", client_key, ca, ca_key, client=True,
                                         not_after=now - datetime.timedelta(days=1))))
    write("rogue_client.pem", pem(cert("rogue-client", client_key, rogue_ca, rogue_key, client=True)))
    write("not_pem.pem", b"this is not a certificate\n")
    other_key = ec.generate_private_key(ec.SECP256R1())
    write("other_key.pem", key_pem(other_key))
    return files


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki, cert="server", client_ca=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[cert], pki[f"{cert}_key"])
    if client_ca:
        context.load_verify_locations(cafile=pki[client_ca])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def handshake(client_context: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str):
    """One TLS handshake over a socket pair, then one byte each way (the client reads first, so it
    sees the server's alert when the server refuses its certificate after a TLS 1.3 handshake).
    Returns (SNI the server saw, client certificate subject, client error)."""
    left, right = socket.socketpair()
    seen: dict = {}

    def sni(_sock, name, _ctx):
        seen["sni"] = name

    server_ctx.sni_callback = sni

    def serve():
        try:
            with server_ctx.wrap_socket(right, server_side=True) as tls:
                peer = tls.getpeercert()
                seen["client"] = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
                tls.sendall(b"y")
                tls.recv(1)
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = exc
            right.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    error = None
    left.settimeout(5)
    try:
        with client_context.wrap_socket(left, server_hostname=server_hostname) as tls:
            if not tls.recv(1):
                raise ConnectionResetError("closed")
            tls.sendall(b"x")
    except (ssl.SSLError, OSError) as exc:
        error = exc
    finally:
        left.close()
    thread.join(5)
    return seen.get("sni"), seen.get("client"), error


def test_ca_path_verifies_the_server(pki):
    context = build_tls_context(TlsOptions(ca_path=pki["ca"]))
    sni, client, error = handshake(context, server_context(pki), "localhost")
    assert error is None and sni == "localhost" and client is None


def test_without_ca_path_the_test_ca_is_not_trusted(pki):
    _sni, _client, error = handshake(build_tls_context(TlsOptions()), server_context(pki), "localhost")
    assert isinstance(error, ssl.SSLCertVerificationError)
    message = describe_transport_error(error)
    assert message.startswith("TLS certificate verification failed: unable to get local issuer certificate")
    assert message.endswith("(set ca_path or validate_certs)")


def test_validate_certs_false_skips_verification(pki):
    context = build_tls_context(TlsOptions(validate_certs=False))
    _sni, _client, error = handshake(context, server_context(pki, "shop"), "127.0.0.1")
    assert error is None


def test_server_name_replaces_the_url_host_for_sni_and_verification(pki):
    # the certificate is for shop.example; the URL names the address
    plain = build_tls_context(TlsOptions(ca_path=pki["ca"]), url_host="127.0.0.1")
    _sni, _client, error = handshake(plain, server_context(pki, "shop"), "127.0.0.1")
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert describe_transport_error(error).endswith("(set server_name)")

    named = build_tls_context(TlsOptions(ca_path=pki["ca"], server_name="shop.example"), url_host="127.0.0.1")
    sni, _client, error = handshake(named, server_context(pki, "shop"), "127.0.0.1")
    assert error is None and sni == "shop.example"


def test_server_name_not_used_for_another_host(pki):
    # a redirect to another host keeps that host's own name
    context = build_tls_context(TlsOptions(ca_path=pki["ca"], server_name="shop.example"), url_host="10.9.9.9")
    sni, _client, error = handshake(context, server_context(pki), "localhost")
    assert error is None and sni == "localhost"


@pytest.mark.parametrize("files", [("client", "client_key"), ("client_combined", None)])
def test_client_certificate_presented(pki, files):
    cert, key = files
    context = build_tls_context(TlsOptions(ca_path=pki["ca"], client_cert=pki[cert],
                                           client_key=pki[key] if key else None))
    _sni, client, error = handshake(context, server_context(pki, client_ca="ca"), "localhost")
    assert error is None and client == "health-client"


def test_client_certificate_missing_is_described(pki):
    context = build_tls_context(TlsOptions(ca_path=pki["ca"]))
    _sni, client, error = handshake(context, server_context(pki, client_ca="ca"), "localhost")
    assert client is None and isinstance(error, ssl.SSLError)
    assert describe_transport_error(error) == (
        "TLS handshake failed: the server requires a client certificate (set client_cert) "
        "[TLSV13_ALERT_CERTIFICATE_REQUIRED]"
    )


def test_untrusted_client_certificate_is_described(pki):
    context = build_tls_context(TlsOptions(ca_path=pki["ca"], client_cert=pki["rogue_client"],
                                           client_key=pki["client_key"]))
    _sni, client, error = handshake(context, server_context(pki, client_ca="ca"), "localhost")
    assert client is None and isinstance(error, ssl.SSLError)
    assert describe_transport_error(error) == (
        "TLS handshake failed: the server does not trust the client certificate (unknown CA) "
        "[TLSV1_ALERT_UNKNOWN_CA]"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ca_path": "not_pem"}, "ca_path {not_pem} holds no usable PEM certificate: "),
        ({"client_cert": "not_pem"}, "cannot load client_cert {not_pem}: "),
        ({"client_cert": "client", "client_key": "other_key"},
         "cannot load client_cert {client} / client_key {other_key}: "),
        ({"client_cert": "client", "client_key": "client_key_encrypted"},
         "cannot load client_cert {client} / client_key {client_key_encrypted}: "),
        ({"client_cert": "client"}, "cannot load client_cert {client}: "),
    ],
)
def test_unusable_files_are_refused(pki, options, message):
    tls = TlsOptions(**{name: pki[value] for name, value in options.items()})
    with pytest.raises(ValueError) as caught:
        build_tls_context(tls)
    assert str(caught.value).startswith(message.format(**pki))


def test_key_content_never_in_the_message(pki):
    # a key given as the certificate: the message names the file, never its content
    key_text = Path(pki["client_key"]).read_text()
    body = key_text.splitlines()[1]
    with pytest.raises(ValueError) as caught:
        build_tls_context(TlsOptions(client_cert=pki["client_key"]))
    assert body not in str(caught.value) and pki["client_key"] in str(caught.value)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ConnectionRefusedError(111, "Connection refused"),
         "connection refused (nothing listens on that address and port)"),
        (TimeoutError("timed out"), "timed out after 2.5s"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host name: Name or service not known"),
        (http.client.RemoteDisconnected("Remote end closed connection without response"),
         "the server closed the connection without a response"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by the server"),
        (OSError(113, "No route to host"), "No route to host"),
        (http.client.BadStatusLine("garbage"), "BadStatusLine: garbage"),
    ],
)
def test_transport_errors_described(error, message):
    assert describe_transport_error(error, 2.5) == message


EOF = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
NO_CERT = TlsOptions()
WITH_CERT = TlsOptions(client_cert="/c.pem")


@pytest.mark.parametrize(
    ("error", "tls", "message"),
    [
        (EOF, NO_CERT, "TLS error: the server closed the connection unexpectedly; "
                       "does the server require a client certificate (set client_cert)?"),
        (EOF, WITH_CERT, "TLS error: the server closed the connection unexpectedly; "
                         "does the server trust the client certificate (client_cert)?"),
        (http.client.RemoteDisconnected("closed"), NO_CERT,
         "the server closed the connection without a response; "
         "does the server require a client certificate (set client_cert)?"),
        (ConnectionResetError(104, "Connection reset by peer"), WITH_CERT,
         "connection reset by the server; does the server trust the client certificate (client_cert)?"),
        (ssl.SSLError(1, "[SSL] something else"), NO_CERT, "TLS error: [SSL] something else"),
    ],
)
def test_https_connection_closed_hints_at_client_certificates(error, tls, message):
    assert describe_transport_error(error, 5, tls) == message
