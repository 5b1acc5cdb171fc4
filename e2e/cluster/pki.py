"""Certificates and keys of the local test bed, made with the ``openssl`` command line.

One self-signed CA signs the API server's serving certificate (valid for loopback, the
host-side pod-network address and the in-cluster service names); a separate RSA key pair
signs and verifies ServiceAccount tokens. Files are reused when present, so a warm
``up`` does not pay for key generation.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of every file the control plane needs."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def kubelet_client_crt(self) -> Path:
        """The API server's client certificate towards the node agent (kubectl logs)."""
        return self.dir / "kubelet-client.crt"

    @property
    def kubelet_client_key(self) -> Path:
        return self.dir / "kubelet-client.key"

    @property
    def sans_file(self) -> Path:
        return self.dir / "apiserver.sans"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ensure_pki(directory: Path, ip_sans: list[str], dns_sans: list[str]) -> Pki:
    """Create (or reuse) the CA, the serving certificate and the ServiceAccount keys."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if not (pki.ca_crt.exists() and pki.ca_key.exists()):
        _openssl("genrsa", "-out", str(pki.ca_key), "2048")
        _openssl(
            "req", "-x509", "-new", "-nodes", "-key", str(pki.ca_key), "-sha256",
            "-days", "3650", "-subj", "/CN=glowplug-testbed-ca", "-out", str(pki.ca_crt),
        )  # fmt: skip
        pki.apiserver_crt.unlink(missing_ok=True)
        pki.kubelet_client_crt.unlink(missing_ok=True)
    sans = ",".join([f"IP:{ip}" for ip in ip_sans] + [f"DNS:{d}" for d in dns_sans])
    # A serving certificate is remade whenever the wanted names change.
    if (
        not pki.apiserver_crt.exists()
        or not pki.sans_file.exists()
        or pki.sans_file.read_text() != sans
    ):
        csr = directory / "apiserver.csr"
        ext = directory / "apiserver.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={sans}\n"
        )
        _openssl("genrsa", "-out", str(pki.apiserver_key), "2048")
        _openssl(
            "req", "-new", "-key", str(pki.apiserver_key), "-subj", "/CN=kube-apiserver",
            "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_crt), "-CAkey", str(pki.ca_key),
            "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext),
            "-out", str(pki.apiserver_crt),
        )  # fmt: skip
        pki.sans_file.write_text(sans)
    if not pki.kubelet_client_crt.exists():
        csr = directory / "kubelet-client.csr"
        ext = directory / "kubelet-client.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n"
        )
        _openssl("genrsa", "-out", str(pki.kubelet_client_key), "2048")
        _openssl(
            "req", "-new", "-key", str(pki.kubelet_client_key),
            "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client", "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_crt), "-CAkey", str(pki.ca_key),
            "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext),
            "-out", str(pki.kubelet_client_crt),
        )  # fmt: skip
    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        _openssl("genrsa", "-out", str(pki.sa_key), "2048")
        _openssl("rsa", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    for key in (pki.ca_key, pki.apiserver_key, pki.sa_key, pki.kubelet_client_key):
        key.chmod(0o600)
    return pki


def ensure_client_cert(pki: Pki, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate signed by the test bed's CA (e.g. the real node's kubelet:
    ``/O=system:nodes/CN=system:node:<node>``); remade when the subject changes."""
    crt, key = pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
    subj_file = pki.dir / f"{name}.subject"
    if crt.exists() and key.exists() and subj_file.exists() and subj_file.read_text() == subject:
        return crt, key
    csr, ext = pki.dir / f"{name}.csr", pki.dir / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    _openssl("genrsa", "-out", str(key), "2048")
    key.chmod(0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_crt), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    subj_file.write_text(subject)
    return crt, key
