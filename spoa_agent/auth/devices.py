"""Device certificates (mTLS): a registered certificate is a principal like an API key.

HAProxy verifies the client's certificate against the CA it was given
(TLS_CLIENT_CA) and, only when it verified, sends the certificate's SHA-256
(the check-request's `device` argument). The agent never reads a certificate
on the request path: it looks the fingerprint up. A device's record is a key
record (store/tokens.py) whose id is the fingerprint's first 12 hex digits,
whose cert_sha256 is the whole fingerprint, and whose secret hash is
NO_SECRET, so that no API key opens it. The fingerprint is no secret (it is
the digest of a public certificate, and counts only because HAProxy checked
that the client holds the certificate's private key); logs name the device
by its id all the same.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from spoa_agent.auth.keys import ID_LENGTH

FINGERPRINT = re.compile(r"[0-9a-f]{64}")
# In the record's `hash` field: no argon2id hash, so no secret matches it
# (as `!` in /etc/shadow).
NO_SECRET = "!"


class CertificateError(ValueError):
    """A file that holds no certificate we can register: the message says why."""


def device_id(fingerprint: str) -> str:
    return fingerprint[:ID_LENGTH]


def fingerprint_of(der: bytes) -> str:
    """What HAProxy sends (ssl_c_der,digest(sha256),hex,lower)."""
    return hashlib.sha256(der).hexdigest()


def read_certificate(path: Path) -> tuple[str, str]:
    """The fingerprint and subject of the first certificate in a PEM file
    (a client's certificate, maybe followed by its chain or key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = path.read_bytes()
    except OSError as err:
        raise CertificateError(f"{path}: {err.strerror or err}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{path}: no PEM certificate in it "
                               "(expected -----BEGIN CERTIFICATE-----)")
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError as err:
        raise CertificateError(f"{path}: not a readable PEM certificate ({err})") from None
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    except ValueError as err:  # a malformed extension
        raise CertificateError(f"{path}: unreadable certificate extensions ({err})") from None
    if ca:
        raise CertificateError(f"{path}: this is a CA certificate; give the device's own "
                               "certificate (the CA goes in HAProxy's TLS_CLIENT_CA)")
    return fingerprint_of(cert.public_bytes(Encoding.DER)), cert.subject.rfc4514_string()
