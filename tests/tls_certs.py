"""A throwaway certificate authority for tests: a server certificate for 127.0.0.1, made at test time (trustme)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertFiles:
    ca_path: Path  # the test CA's certificate: trust it to accept the server
    cert_path: Path  # the server's certificate chain (PEM)
    key_path: Path  # the server's private key (PEM)


def make_certs(directory: Path) -> CertFiles:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    directory.mkdir(parents=True, exist_ok=True)
    certs = CertFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca_path))
    server.private_key_pem.write_to_path(str(certs.key_path))
    with open(certs.cert_path, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    return certs
