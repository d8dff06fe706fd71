"""The servers the tools download from: nginx, and a front that delays every request.

nginx runs with its own prefix and config in a temp folder (never /etc/nginx) on a free
127.0.0.1 port (and, given a certificate, on a second one with TLS). This is the one nginx
starter of the repo: the tests start theirs through it too (tests/support/helpers.py), with
one worker and no open-file cache. The delaying front is a separate
Python process, so its CPU and its event loop compete with no tool's measurement and hold no
lock of the harness.

``python -m perf.servers delay --upstream PORT --delay S`` runs the front by itself; it prints
its port on the first line of stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
#: How long a server gets to answer on its port.
START_TIMEOUT = 10.0

NGINX_CONF = """\
# Written by perf/servers.py for one run (of the benchmark, or of the tests); nginx -p {tmp} -c
# this file.
worker_processes {workers};
user {user} {group};
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" warn;

events {{
    worker_connections 4096;
}}

http {{
{access_log}    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{file_cache}{maps}    types {{ }}
    default_type application/octet-stream;

    # Every temp path in the tmp folder: the compiled-in ones need root.
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";

    server {{
        listen {host}:{port};
        root "{root}";

        # 10 MiB/s per response, for the capped scenario. Without sendfile_max_chunk nginx hands
        # the kernel 2 MiB at a time and throttles only between those pieces, so ranges of a few
        # MiB escape the cap.
        location /capped/ {{
            limit_rate 10m;
            sendfile_max_chunk 64k;
        }}

        # Requests in flight, for perf/wire.py: nginx logs a request before it stops counting it.
        location = /{status} {{
            stub_status;
            access_log off;
        }}
{locations}    }}
{tls_server}}}
"""
#: One throttled location: ``/throttled/<name>/`` serves the folder ``<data>`` with the rate its
#: map gives the connection (0: no limit). nginx takes a variable in limit_rate from 1.17.
THROTTLED_LOCATION = """\
        location /throttled/{name}/ {{
            alias "{root}/{data}/";
            limit_rate ${variable};
            sendfile_max_chunk 64k;
        }}
"""
#: Connections whose serial number ends in 7 (one in ten) get ``rate`` bytes/s.
THROTTLE_MAP = """\
    map $connection ${variable} {{
        "~7$" {rate};
        default 0;
    }}
"""
TLS_SERVER = """\
    server {{
        listen {host}:{port} ssl;
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        root "{root}";
    }}
"""
#: A caching proxy in front of ``upstream`` as a fleet would run one (README "Fleets"): nginx's
#: slice module asks the upstream for whole slices of ``slice`` bytes and caches each under its
#: own key, so every range a client asks is served from the slices it touches. With
#: proxy_cache_lock the first request to miss a slice fetches it and the others wait for it:
#: other machines starting at once, and the rest of a range mpdl cut in two (tail.py) while
#: the proxy was still fetching ahead for its first half.
CACHE_CONF = """\
# Written by perf/servers.py for one run; nginx -p {tmp} -c this file.
worker_processes 1;
user {user} {group};
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" warn;

events {{
    worker_connections 1024;
}}

http {{
{access_log}    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    proxy_cache_path "{tmp}/cache" levels=1:2 keys_zone=fleet:10m max_size=10g inactive=7d
                     use_temp_path=off;

    server {{
        listen {host}:{port};
        location / {{
            slice {slice};
            proxy_cache fleet;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_pass http://{upstream};
        }}
    }}
}}
"""
#: Descriptors, sizes and mtimes of up to 20,000 files kept for 60 s: nginx then opens a small
#: file once, not once per request. A file rewritten while cached is served with stale sizes.
FILE_CACHE = "    open_file_cache max=20000 inactive=60s;\n"
#: One line per request, when asked for: what a test needs to count the bytes a server sent.
ACCESS_LOG = """\
    log_format mpdl '$request_method $uri $status $body_bytes_sent "$http_range" $connection';
    access_log "{path}" mpdl;
"""
#: ACCESS_LOG with each request's end ($msec, epoch seconds) and duration ($request_time) in
#: front, for a run's timeline (perf/timeline.py); the fields body_bytes_sent reads stay last.
TIMELINE_LOG = """\
    log_format mpdl '$msec $request_time $request_method $uri $status $body_bytes_sent '
                    '"$http_range" $connection';
    access_log "{path}" mpdl;
"""


#: Where nginx answers its stub_status (no file of a scenario or a test has this name).
STATUS_PATH = ".nginx-status"


def requests_in_flight(port: int) -> int:
    """Requests the nginx on ``port`` (started by ``nginx``) is reading or answering now, this
    one aside (stub_status's Reading and Writing, which count every worker's)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", "/" + STATUS_PATH)
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    fields = text.split()
    counted = {name: int(fields[i + 1]) for i, name in enumerate(fields[:-1])
               if name in ("Reading:", "Writing:")}
    return counted["Reading:"] + counted["Writing:"] - 1


def body_bytes_sent(lines: str) -> int:
    """The body bytes sent for the complete lines of ``lines`` (ACCESS_LOG's format). Read
    from the right: ``$uri`` is decoded and may hold spaces, the fields after it do not."""
    return sum(int(line.rsplit(" ", 3)[1]) for line in lines.splitlines(keepends=True)
               if line.endswith("\n"))


#: What ``nginx`` says when there is none, and how to get it.
NGINX_MISSING = "nginx not found (sh tests/install.sh, or apt-get install nginx-light)"


@dataclass(frozen=True)
class Server:
    """A running server: ``url`` ends with "/"; ``tls_url`` too, when it also serves HTTPS."""

    url: str
    port: int
    tls_url: str | None = None


@dataclass(frozen=True)
class Throttled:
    """A folder of the served root (``data``), served again at ``/throttled/<name>/`` with
    connections whose serial number ends in 7 limited to ``rate`` bytes/s."""

    name: str
    data: str
    rate: int


@dataclass(frozen=True)
class Certificate:
    """A server certificate and its key (PEM files), for nginx's TLS listener."""

    cert: Path
    key: Path


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server that cannot pick one itself."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


def _variable(name: str) -> str:
    return "perf_rate_" + "".join(c if c.isalnum() else "_" for c in name)


@contextlib.contextmanager
def nginx(root: Path, tmp: Path, workers: int = 2, *, file_cache: bool = True,
          throttled: Sequence[Throttled] = (), tls: Certificate | None = None,
          access_log: Path | None = None, log_format: str = ACCESS_LOG) -> Iterator[Server]:
    """nginx serving ``root`` until the block ends; its config, pid and logs live in ``tmp``.

    ``workers`` worker processes: a single one is running once the port answers (it is what
    answers); with more, the port may answer while the last is still being forked.
    ``file_cache`` turns FILE_CACHE on. ``/capped/`` is served at 10 MiB/s per response (the
    capped scenario), each of ``throttled`` at ``/throttled/<name>/``; with ``tls``, ``root`` is
    also served over HTTPS on a second port (``Server.tls_url``); with ``access_log``, each
    request is a line of that file (``log_format``: ACCESS_LOG, or TIMELINE_LOG). Raises
    RuntimeError without nginx (NGINX_MISSING), or with nginx's logs when it does not answer.
    """
    binary = find_nginx()
    if binary is None:
        raise RuntimeError(NGINX_MISSING)
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tls_port = free_port() if tls else None
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        tmp=tmp, port=port, root=root, host=HOST, workers=workers, status=STATUS_PATH,
        access_log=log_format.format(path=access_log) if access_log else "    access_log off;\n",
        file_cache=FILE_CACHE if file_cache else "",
        maps="".join(THROTTLE_MAP.format(variable=_variable(t.name), rate=t.rate)
                     for t in throttled),
        locations="".join(THROTTLED_LOCATION.format(name=t.name, data=t.data, root=root,
                                                    variable=_variable(t.name))
                          for t in throttled),
        tls_server=TLS_SERVER.format(host=HOST, port=tls_port, cert=tls.cert, key=tls.key,
                                     root=root) if tls else "",
        user=pwd.getpwuid(os.geteuid()).pw_name, group=grp.getgrgid(os.getegid()).gr_name))
    with _running_nginx(binary, conf, port, tmp):
        yield Server(f"http://{HOST}:{port}/", port,
                     f"https://{HOST}:{tls_port}/" if tls_port else None)


def _running_nginx(binary: str, conf: Path, port: int,
                   tmp: Path) -> contextlib.AbstractContextManager[None]:
    """nginx in the foreground with ``conf`` until the block ends, once ``port`` answers."""
    return running([binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
                    "-g", "daemon off;"], port, tmp, "nginx.out")


@contextlib.contextmanager
def running(command: list[str], port: int, tmp: Path,
            output: str = "server.out") -> Iterator[None]:
    """A server ``command`` in the foreground (its own session, its output in ``tmp/output``)
    until the block ends, once ``port`` answers; stopped, and waited for, at the end."""
    with (tmp / output).open("wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        _wait_for_http(proc, port, tmp)
        yield
    finally:
        _stop(proc)


@contextlib.contextmanager
def caching_front(upstream: int, tmp: Path, slice_size: str = "2m",
                  access_log: Path | None = None, log_format: str = ACCESS_LOG) -> Iterator[Server]:
    """An nginx caching proxy (CACHE_CONF) in front of 127.0.0.1:``upstream`` until the block
    ends; its config, cache and logs live in ``tmp`` (each request a line in ``access_log`` if
    given, as for ``nginx``). Raises RuntimeError as ``nginx`` does."""
    binary = find_nginx()
    if binary is None:
        raise RuntimeError(NGINX_MISSING)
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(CACHE_CONF.format(
        tmp=tmp, port=port, host=HOST, upstream=f"{HOST}:{upstream}", slice=slice_size,
        access_log=log_format.format(path=access_log) if access_log else "    access_log off;\n",
        user=pwd.getpwuid(os.geteuid()).pw_name, group=grp.getgrgid(os.getegid()).gr_name))
    with _running_nginx(binary, conf, port, tmp):
        yield Server(f"http://{HOST}:{port}/", port)


@contextlib.contextmanager
def delaying_front(upstream: int, delay: float, tmp: Path) -> Iterator[Server]:
    """The delaying front (a child process) in front of ``upstream`` until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    command = [sys.executable, "-m", "perf.servers", "delay", "--upstream", str(upstream),
               "--delay", str(delay)]
    with (tmp / "front.err").open("wb") as errors:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=errors, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"delaying front did not start: {(tmp / 'front.err').read_text()}")
        port = int(line)
        _wait_for_http(proc, port, tmp)
        yield Server(f"http://{HOST}:{port}/", port)
    finally:
        _stop(proc)
        if proc.stdout:
            proc.stdout.close()


def _pythonpath() -> str:
    """The folder holding the perf package first, so ``-m perf.x`` works from any folder."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


def _wait_for_http(proc: subprocess.Popen[bytes], port: int, logs: Path) -> None:
    """Return once an HTTP request on ``port`` gets an answer; raise (and stop ``proc``) if not."""
    deadline = time.monotonic() + START_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=1)
        try:
            conn.request("HEAD", "/")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    _stop(proc)
    found = sorted(p for p in logs.iterdir() if p.suffix in (".log", ".out", ".err"))
    log = "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in found)
    raise RuntimeError(f"server did not answer on port {port} (exit {proc.returncode}):\n{log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (nginx: fast shutdown, the master waits for its workers), then SIGKILL the group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers orphaned by a killed master
    proc.wait()


# The delaying front itself.


async def _pump_delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        delay: float) -> None:
    """Client to server: every chunk is forwarded ``delay`` seconds after it arrived, in order.

    Reading goes on meanwhile, so a chunk is held ``delay`` once, not behind the ones before it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait((0.0, b""))
        await task


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Server to client, as fast as it comes."""
    while data := await reader.read(262144):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _serve_delayed(upstream: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(HOST, upstream)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pump_delayed(client_r, server_w, delay),
                                 _pump(server_r, client_w))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (client_w, server_w):
                w.close()

    server = await asyncio.start_server(handle, HOST, 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.servers",
                                     description="Benchmark servers that run as their own process.")
    sub = parser.add_subparsers(dest="command", required=True)
    delay = sub.add_parser("delay", help="a TCP front on 127.0.0.1 that holds each "
                                         "client-to-server chunk DELAY seconds")
    delay.add_argument("--upstream", type=int, required=True, help="port on 127.0.0.1")
    delay.add_argument("--delay", type=float, default=0.02, help="seconds (default 0.02)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_delayed(args.upstream, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
