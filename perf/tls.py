"""A certificate authority made for one benchmark run, and a server certificate it signed.

The big-tls scenario is served over HTTPS that every tool verifies: each is given this CA
(never an "insecure" switch). The files live in the run's temp folder and go with it; the CA's
key signs one certificate and is never used again. Made with the openssl command line, so the
harness needs no crypto package.

The server certificate names 127.0.0.1 as an IP address (what the URLs use, and what curl,
OpenSSL and Python check) and ``localhost``; it also carries "127.0.0.1" as a DNS name, because
axel matches DNS names only, and rejects a name without a dot (its src/ssl_verify.c and
dn-match.c), so without that entry axel could not verify the server at all.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .servers import HOST, Certificate

#: Days the certificates are valid: a run is over in hours.
DAYS = 2
OPENSSL_MISSING = "openssl not found (apt-get install openssl): the big-tls scenario needs it"
SERVER_EXTENSIONS = f"""\
subjectAltName = IP:{HOST}, DNS:localhost, DNS:{HOST}
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
"""


@dataclass(frozen=True)
class Authority:
    """The run's CA certificate (what tools are given to trust) and the server's certificate."""

    ca: Path
    server: Certificate


def find_openssl() -> str | None:
    return shutil.which("openssl")


def _openssl(binary: str, *args: str | Path, cwd: Path) -> None:
    done = subprocess.run([binary, *map(str, args)], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def make_authority(folder: Path) -> Authority:
    """A fresh CA (ECDSA P-256) and a server certificate for HOST signed by it, in ``folder``.

    Raises RuntimeError without openssl (OPENSSL_MISSING) or when a step fails.
    """
    binary = find_openssl()
    if binary is None:
        raise RuntimeError(OPENSSL_MISSING)
    folder.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(binary, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem",
             "-days", str(DAYS), "-subj", "/CN=mpdl perf run CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl(binary, "req", "-new", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={HOST}", cwd=folder)
    (folder / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl(binary, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", "1", "-days", str(DAYS), "-extfile", "server.ext",
             "-out", "server.pem", cwd=folder)
    (folder / "ca.key").unlink()  # it has signed the one certificate it had to
    return Authority(folder / "ca.pem", Certificate(folder / "server.pem", folder / "server.key"))
