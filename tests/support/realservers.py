"""The servers people run, started by the tests: Apache httpd, lighttpd, Squid as a forward proxy
and Python's http.server (nginx is perf/servers.py's, the repo's one nginx starter).

Each runs in the foreground with a config written to a temp folder, on a free 127.0.0.1 port,
until its block ends (then SIGTERM, and SIGKILL for its process group: nothing is left). Apache
serves ``/capped/`` at 10 MiB/s per response, as perf/servers.py's nginx does, so a test can
interrupt a download while it runs (lighttpd 1.4 caps whole responses only, never a range: the
tests cap it with tests/support/miniproxy.py).

Started as root, Apache, lighttpd and Squid drop to their own user (www-data, proxy) before
they read files or open logs, and pytest's temp folders are open to their owner only: so they
serve and log in a ``public_folder``, which every user may enter, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from helpers import skip_or_fail
from perf.servers import HOST, Certificate, Server, free_port, running

APACHE = "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
LIGHTTPD = "/usr/sbin/lighttpd"
LIGHTTPD_TLS_MODULE = "/usr/lib/lighttpd/mod_openssl.so"
SQUID = "/usr/sbin/squid"
#: What to do when one is missing: tests/install.sh installs them all.
MISSING = "{name} not found (sh tests/install.sh, or apt-get install {package})"
#: The rate of ``/capped/`` in KiB/s (perf/servers.py's nginx: limit_rate 10m).
CAPPED_KIB = 10240
#: How long Squid may take to log a request after its connection closed.
LOG_WAIT = 5.0

ROOT = os.geteuid() == 0

APACHE_CONF = """\
# Written by tests/support/realservers.py: apache2 -f this file -DFOREGROUND
ServerRoot "{tmp}"
DefaultRuntimeDir "{tmp}"
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule env_module {modules}/mod_env.so
LoadModule ratelimit_module {modules}/mod_ratelimit.so
{ssl_modules}Listen {host}:{port}
ServerName {host}
PidFile "{tmp}/httpd.pid"
ErrorLog "{tmp}/error.log"
LogLevel warn
{user}
# One child process that is up once the port answers (the leak check sees no process appear).
StartServers 1
ServerLimit 1
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
EnableSendfile On
DocumentRoot "{root}"
<Directory "{root}">
    Require all granted
</Directory>
<Location "/capped/">
    SetOutputFilter RATE_LIMIT
    SetEnv rate-limit {capped}
</Location>
{tls}"""
APACHE_TLS = """\
Listen {host}:{port}
<VirtualHost {host}:{port}>
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
</VirtualHost>
"""
LIGHTTPD_CONF = """\
# Written by tests/support/realservers.py: lighttpd -D -f this file
server.document-root = "{root}"
server.bind = "{host}"
server.port = {port}
server.pid-file = "{tmp}/lighttpd.pid"
server.errorlog = "{tmp}/error.log"
{user}{modules}{tls}"""
LIGHTTPD_TLS = """\
$SERVER["socket"] == "{host}:{port}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{cert}"
    ssl.privkey = "{key}"
}}
"""
SQUID_CONF = """\
# Written by tests/support/realservers.py: squid -N -f this file. A forward proxy for this machine
# only, caching nothing, logging every request.
http_port {host}:{port}
acl this_machine src {host}/32
{auth}http_access allow this_machine{signed_in}
http_access deny all
cache deny all
cache_mem 0 MB
pid_filename {tmp}/squid.pid
cache_log {tmp}/cache.log
access_log stdio:{tmp}/access.log
coredump_dir {tmp}
pinger_enable off
shutdown_lifetime 0 seconds
{user}"""
#: With ``credentials``: Basic authentication, checked by Squid's own helper against a password
#: file; the helper starts with Squid, so no process appears while a test runs.
SQUID_AUTH = """auth_param basic program {helper} {tmp}/passwd
auth_param basic children 1 startup=1 idle=1
auth_param basic realm mpdl tests
acl signed_in proxy_auth REQUIRED
"""
SQUID_HELPER = "/usr/lib/squid/basic_ncsa_auth"


@contextlib.contextmanager
def public_folder() -> Iterator[Path]:
    """A temp folder every user may enter and write (see the module's docstring)."""
    folder = Path(tempfile.mkdtemp(prefix="mpdl-test-"))
    try:
        folder.chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` readable by every user; return ``target``."""
    shutil.copytree(source, target)
    for top, _, files in os.walk(target):
        os.chmod(top, 0o755)
        for name in files:
            os.chmod(os.path.join(top, name), 0o644)
    return target


def logs_folder(parent: Path, name: str) -> Path:
    """A folder for one server's config and logs, writable by the user it drops to."""
    folder = parent / name
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def _require(path: str, name: str, package: str) -> None:
    if not os.path.exists(path):
        skip_or_fail(MISSING.format(name=name, package=package))


@contextlib.contextmanager
def apache(root: Path, tmp: Path, tls: Certificate | None = None) -> Iterator[Server]:
    """Apache httpd (mpm_event) serving ``root``, and over HTTPS too given ``tls``."""
    _require(APACHE, "Apache httpd", "apache2")
    port, tls_port = free_port(), free_port() if tls else None
    conf = tmp / "httpd.conf"
    conf.write_text(APACHE_CONF.format(
        tmp=tmp, modules=APACHE_MODULES, host=HOST, port=port, root=root, capped=CAPPED_KIB,
        user="User www-data\nGroup www-data" if ROOT else "",
        ssl_modules=(f"LoadModule ssl_module {APACHE_MODULES}/mod_ssl.so\n"
                     f"LoadModule socache_shmcb_module {APACHE_MODULES}/mod_socache_shmcb.so\n"
                     if tls else ""),
        tls=APACHE_TLS.format(host=HOST, port=tls_port, cert=tls.cert, key=tls.key)
        if tls else ""))
    with running([APACHE, "-f", str(conf), "-DFOREGROUND"], port, tmp):
        yield Server(f"http://{HOST}:{port}/", port,
                     f"https://{HOST}:{tls_port}/" if tls_port else None)


@contextlib.contextmanager
def lighttpd(root: Path, tmp: Path, tls: Certificate | None = None) -> Iterator[Server]:
    """lighttpd serving ``root``, and over HTTPS too given ``tls`` (mod_openssl)."""
    _require(LIGHTTPD, "lighttpd", "lighttpd")
    if tls:
        _require(LIGHTTPD_TLS_MODULE, "lighttpd's TLS module", "lighttpd-mod-openssl")
    port, tls_port = free_port(), free_port() if tls else None
    conf = tmp / "lighttpd.conf"
    conf.write_text(LIGHTTPD_CONF.format(
        tmp=tmp, host=HOST, port=port, root=root,
        user='server.username = "www-data"\nserver.groupname = "www-data"\n' if ROOT else "",
        modules='server.modules += ("mod_openssl")\n' if tls else "",
        tls=LIGHTTPD_TLS.format(host=HOST, port=tls_port, cert=tls.cert, key=tls.key)
        if tls else ""))
    with running([LIGHTTPD, "-D", "-f", str(conf)], port, tmp):
        yield Server(f"http://{HOST}:{port}/", port,
                     f"https://{HOST}:{tls_port}/" if tls_port else None)


@contextlib.contextmanager
def python_http_server(root: Path, tmp: Path) -> Iterator[Server]:
    """``python -m http.server`` serving ``root``: HTTP/1.0, no Range support at all."""
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", HOST,
               "--directory", str(root)]
    with running(command, port, tmp):
        yield Server(f"http://{HOST}:{port}/", port)


class Squid(NamedTuple):
    """A running Squid forward proxy: ``url`` is its proxy URL; ``access_log`` its log."""

    url: str
    port: int
    access_log: Path

    def logged(self, *needles: str, timeout: float = LOG_WAIT) -> list[str]:
        """The access log's lines holding every needle, waiting up to ``timeout`` for one:
        Squid logs a request when it ends, and a CONNECT tunnel when it closes."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            lines = [line for line in text.splitlines() if all(n in line for n in needles)]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


@contextlib.contextmanager
def squid(tmp: Path, credentials: str | None = None) -> Iterator[Squid]:
    """Squid as a forward proxy on 127.0.0.1, for clients on this machine; ``tmp`` must be
    writable by Squid's user when root starts it (``logs_folder``). Given ``credentials``
    ("user:password"), it serves only requests that carry them (Basic)."""
    _require(SQUID, "Squid", "squid")
    auth = signed_in = ""
    if credentials:
        _require(SQUID_HELPER, "Squid's basic_ncsa_auth", "squid")
        user, _, password = credentials.partition(":")
        hashed = subprocess.run(["openssl", "passwd", "-apr1", password], capture_output=True,
                                text=True, check=True).stdout.strip()
        (tmp / "passwd").write_text(f"{user}:{hashed}\n")
        (tmp / "passwd").chmod(0o644)
        auth, signed_in = SQUID_AUTH.format(helper=SQUID_HELPER, tmp=tmp), " signed_in"
    port = free_port()
    conf = tmp / "squid.conf"
    conf.write_text(SQUID_CONF.format(tmp=tmp, host=HOST, port=port, auth=auth,
                                      signed_in=signed_in,
                                      user="cache_effective_user proxy\n" if ROOT else ""))
    # Its own service name: Squid names its /dev/shm segments after it, so two never clash (and
    # not "mpdl...": the tests take /dev/shm entries named so for mpdl's, and a leak).
    with running([SQUID, "-N", "-n", f"squidtest{port}", "-f", str(conf)], port, tmp):
        yield Squid(f"http://{HOST}:{port}", port, tmp / "access.log")
