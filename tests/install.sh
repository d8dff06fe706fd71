#!/bin/sh
# Installs everything the tests need: mpdl in editable mode with its test and perf extras, and the
# programs the tests run (the servers people run: nginx, Apache httpd, lighttpd with its TLS
# module, Squid as a forward proxy; openssl for the test CA; aria2c and axel for the benchmark's
# smoke test; mkfs.ext2 and losetup for a disk whose fsync fails). The programs come from
# apt-get when missing, as root on Debian; otherwise one line says what to install (the tests
# that need them skip; under CI=true they fail). Quiet, and safe to run again:
#
#     sh tests/install.sh && python3 -m pytest -q
#
# PYTHON picks the interpreter (default python3: the one that runs pytest above).
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

have() {  # on PATH, or in an sbin folder a non-root PATH often lacks
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

missing=""
have nginx || missing="$missing nginx-light"
have apache2 || missing="$missing apache2"
have lighttpd || missing="$missing lighttpd"
[ -e /usr/lib/lighttpd/mod_openssl.so ] || missing="$missing lighttpd-mod-openssl"
have squid || missing="$missing squid"
have openssl || missing="$missing openssl"
have aria2c || missing="$missing aria2"
have axel || missing="$missing axel"
have mkfs.ext2 || missing="$missing e2fsprogs"  # the failing-fsync test: ext2 on a loop device
have losetup || missing="$missing mount"

if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        # The packages' scripts must not start the servers as system daemons (ports 80, 3128):
        # the tests start their own. Docker images have this policy already; others get it for
        # the install only.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get update -qq
        # shellcheck disable=SC2086  # one word per package
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        case $missing in
            *nginx* | *apache2* | *lighttpd* | *squid* | *openssl* | *e2fsprogs* | *mount*)
                effect="the tests that need them skip (under CI=true they fail)" ;;
            *) effect="the benchmark's smoke test reports them missing" ;;
        esac
        echo "tests/install.sh: not installed:$missing (as root on Debian:" \
             "apt-get install --no-install-recommends$missing); without them $effect" >&2
    fi
fi

if [ "$(id -u)" = 0 ]; then
    export PIP_ROOT_USER_ACTION=ignore  # pip's warning about root: a container's normal case
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip install -q -e '.[test,perf]'
