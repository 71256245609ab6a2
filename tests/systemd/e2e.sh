#!/usr/bin/env bash
# make e2e-systemd: the Debian package under a real systemd, end to end.
#
# Boots a minimal Debian 12 root (mmdebstrap, cached) with
#   systemd-nspawn --register=no --keep-unit -b --private-network
# and drives it with `nsenter -t <its PID 1> -a` (machinectl and systemd-run -M need systemd as
# the host's PID 1, which CI machines may not have).  Inside, only loopback exists (a network
# namespace of our own).  The steps are the ones a person takes:
#   apt install from a local repository -> nothing runs -> the shipped example configs, only
#   their addresses filled in, for quictun@server and quictun@client -> tunnels to a small
#   HTTP server and a UNIX-socket echo -> the API -> API and socket groups (an API user
#   cannot read keys) -> systemctl reload (a new
#   listener from a drop-in; an open tunnel survives) -> a broken reload (fails, old config
#   keeps running) -> systemd-analyze verify/security -> part of the test suite inside the
#   unit's sandbox -> systemctl stop (exit 0, sockets gone) -> upgrade (instances restarted)
#   -> apt purge (nothing of the package left; admin-made files and drop-ins stay).
# Each step prints its time.
#
# Environment: DEB=path (default: build it with packaging/deb/build.sh, in parallel with the
# root file system), E2E_CACHE (rootfs and test
# dependency cache, default /var/cache/quictund-e2e), MIRROR, SANDBOX_TESTS ("all" for the
# whole suite, "none" to skip, or pytest paths), KEEP=1 keeps the work directory.
# Needs root.  When CI=true every missing capability is an error, never a skip.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${E2E_CACHE:-/var/cache/quictund-e2e}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,curl,python3,adduser,man-db
SANDBOX_TESTS=${SANDBOX_TESTS:-tests/test_policy.py tests/e2e/test_daemon.py tests/e2e/test_reload_cli.py tests/test_systemd.py}

say() { printf 'e2e: %s\n' "$*"; }
die() { printf 'e2e: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- step timing -------------------------------------------------------------------------
T_ALL=$(date +%s.%N)
T_STEP=""
STEP=""
SUMMARY=()
step() {
    end_step
    STEP=$1
    T_STEP=$(date +%s.%N)
    say "--- $STEP"
}
end_step() {
    [ -n "$STEP" ] || return 0
    local took
    took=$(echo "$(date +%s.%N) - $T_STEP" | bc)
    SUMMARY+=("$(printf '%7.1f s  %s' "$took" "$STEP")")
    say "    done in $(printf '%.1f' "$took") s"
    STEP=""
}

# ---- preconditions -----------------------------------------------------------------------
unavailable() {
    if [ "${CI:-}" = true ]; then
        die "$1 (CI=true: the systemd end-to-end test must run)"
    fi
    say "SKIPPED: $1"
    exit 0
}
[ "$(id -u)" = 0 ] || unavailable "needs root (systemd-nspawn, mmdebstrap)"
# Host tools, and the package's build dependencies too: build.sh runs in parallel below and
# must not need apt-get (dpkg's lock) at the same time.
need=()
for pkg in systemd-container mmdebstrap dpkg-dev bc debhelper python3-venv lintian; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -z "${DEB:-}" ] || [ -f "$DEB" ] || die "DEB=$DEB: no such file"

WORK=$(mktemp -d /var/tmp/quictund-e2e.XXXXXX)
ROOT=$WORK/root
NSPAWN=""
LEADER=""
MOUNTED=0
cleanup() {
    local rc=$?
    set +e
    if [ -n "${DEB_BUILD:-}" ] && kill -0 "$DEB_BUILD" 2>/dev/null; then
        kill -- -"$DEB_BUILD" 2>/dev/null
        wait "$DEB_BUILD" 2>/dev/null
    fi
    if [ $rc != 0 ] && [ -n "$LEADER" ]; then
        say "journal of the failed run (last 60 lines):"
        X journalctl --no-pager -n 60 -u 'quictun@*' -u 'e2e-*' 2>&1 | sed 's/^/    /'
    fi
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        [ -n "$LEADER" ] && X systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$NSPAWN" 2>/dev/null && kill -KILL "$NSPAWN"
        wait "$NSPAWN" 2>/dev/null
    fi
    [ "$MOUNTED" = 1 ] && umount "$ROOT"
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    [ $rc = 0 ] || say "FAILED in step: ${STEP:-?} (exit $rc)"
}
trap cleanup EXIT

# make deb, in the background while the root file system is built (both mostly download)
DEB_BUILD=""
if [ -z "${DEB:-}" ]; then
    # its own process group, so a failure here can stop the whole build (cleanup)
    OUT="$WORK/dist" setsid "$root/packaging/deb/build.sh" >"$WORK/deb.log" 2>&1 &
    DEB_BUILD=$!
    T_DEB=$(date +%s.%N)
fi

# X CMD...: run CMD inside the container (all its namespaces, a clean environment).
X() {
    nsenter -t "$LEADER" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}
# wait_for SECONDS CMD...: poll until CMD succeeds.
wait_for() {
    local until=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$until" ] || { "$@" || true; return 1; }
        sleep 0.2
    done
}
# fetch PORT: GET /hello.txt through a tunnel listener in the container.
fetch() { X curl -fsS --max-time 10 "http://127.0.0.1:$1/hello.txt"; }
expect_hello() {
    local got
    got=$(fetch "$1") || die "GET through 127.0.0.1:$1 failed"
    [ "$got" = "hello through quictund" ] || die "unexpected body through :$1: $got"
}
main_pid() { X systemctl show -p MainPID --value "$1"; }

# ---- 1. the root file system ---------------------------------------------------------------
step "rootfs (mmdebstrap $SUITE, cached)"
key=$(printf '%s\n' "$SUITE" "$PACKAGES" "$MIRROR" "variant=apt v3" | sha256sum | cut -c1-16)
base=$CACHE/rootfs-$key
mkdir -p "$CACHE"
if [ -d "$base" ]; then
    say "using cached $base"
else
    say "building $base (not cached yet)"
    rm -rf "$base.tmp"
    mmdebstrap --variant=apt --format=directory --include="$PACKAGES" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --customize-hook='rm -f "$1"/etc/hostname' \
        --customize-hook='printf "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" >"$1"/etc/hosts' \
        "$SUITE" "$base.tmp" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 ||
        { tail -20 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
    mv "$base.tmp" "$base"
fi
# The cached tree stays pristine: the container writes to an overlay in the work directory.
mkdir -p "$ROOT" "$WORK/upper" "$WORK/overlay-work"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$WORK/upper,workdir=$WORK/overlay-work" "$ROOT"
MOUNTED=1
# apt inside knows only our local repository (the container has no network but loopback)
echo 'deb [trusted=yes] file:/srv/repo ./' >"$ROOT/etc/apt/sources.list"
rm -f "$ROOT"/etc/apt/sources.list.d/*

# ---- 2. test dependencies for the sandboxed suite (pure Python, cached) ---------------------
if [ "$SANDBOX_TESTS" != none ]; then
    step "test dependencies for the sandboxed suite (cached)"
    reqs=$(/usr/bin/python3 - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]
print(" ".join(r for r in extras if not r.startswith(("mypy", "ruff"))))
EOF
)
    tkey=$(echo "$reqs v1" | sha256sum | cut -c1-16)
    site=$CACHE/testdeps-$tkey
    if [ ! -d "$site" ]; then
        /usr/bin/python3 -m venv "$WORK/pipvenv"
        # shellcheck disable=SC2086
        "$WORK/pipvenv/bin/pip" install --quiet --target "$site.tmp" $reqs
        mv "$site.tmp" "$site"
    fi
    mkdir -p "$ROOT/srv/qt-tests"
    cp -r "$site" "$ROOT/srv/qt-tests/site"
    # the tests, and the repository files some of them check (examples, docs, packaging)
    cp -r "$root/tests" "$root/pyproject.toml" "$root/README.md" "$root/etc" "$root/docs" \
        "$root/packaging" "$ROOT/srv/qt-tests/"
    find "$ROOT/srv/qt-tests" -name __pycache__ -prune -exec rm -rf {} +
fi

# ---- the package -----------------------------------------------------------------------------
if [ -n "$DEB_BUILD" ]; then
    step "make deb (started in parallel at the beginning)"
    wait "$DEB_BUILD" || { DEB_BUILD=""; grep -v '^WARNING: Location' "$WORK/deb.log" | tail -40 >&2; die "make deb"; }
    DEB_BUILD=""
    grep -E '^(deb:|[EWIN]: )' "$WORK/deb.log" | sed 's/^/    /'
    say "make deb took $(printf '%.1f' "$(echo "$(date +%s.%N) - $T_DEB" | bc)") s in all"
    DEB=$(ls "$WORK"/dist/quictund_*.deb)
    mkdir -p "$root/dist"
    cp "$DEB" "$root/dist/"
fi

# ---- 3. boot ---------------------------------------------------------------------------------
step "boot systemd in the container"
systemd-nspawn --register=no --keep-unit -b -D "$ROOT" --private-network \
    --machine="qt-e2e-$$" --console=passive >"$WORK/nspawn.log" 2>&1 &
NSPAWN=$!
for _ in $(seq 100); do
    # the container's PID 1 is nspawn's child once it has exec'ed systemd
    LEADER=$(ps --ppid "$NSPAWN" -o pid=,comm= | awk '$2 == "systemd" {print $1}' | head -1 || true)
    [ -n "$LEADER" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || { cat "$WORK/nspawn.log" >&2; die "systemd-nspawn exited"; }
    sleep 0.1
done
[ -n "$LEADER" ] || die "no container PID 1"
# PID 1 answers only once its private socket exists: ask until it says it is up.
state=starting
for _ in $(seq 300); do
    state=$(X systemctl is-system-running 2>&1 || true)
    case $state in running|degraded) break ;; esac
    sleep 0.2
done
say "container PID 1 is host PID $LEADER; system state: $state"
case $state in running|degraded) ;; *) cat "$WORK/nspawn.log" >&2; die "boot: $state" ;; esac
X systemctl --version | head -1

# ---- 4. install from a local repository ------------------------------------------------------
step "apt install quictund from a local repository"
mkdir -p "$ROOT/srv/repo"
cp "$DEB" "$ROOT/srv/repo/"
# Depends: libjemalloc2 (the container has no mirror): the repository carries Debian's package,
# so apt resolves it as it would from deb.debian.org
(cd "$ROOT/srv/repo" && { apt-get download -q libjemalloc2 >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download -q libjemalloc2 >/dev/null; }; }) ||
    die "cannot download Debian's libjemalloc2 for the local repository"
(cd "$ROOT/srv/repo" && dpkg-scanpackages --multiversion . >Packages 2>/dev/null)
X apt-get update -qq
X apt-get install -y -qq quictund >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt install"; }
X dpkg-query -W quictund
X dpkg-query -W libjemalloc2 >/dev/null || die "apt did not install libjemalloc2 with quictund"
X quictund --version
X getent passwd quictun >/dev/null || die "no quictun user"
X getent group quictun-api >/dev/null || die "no quictun-api group"
[ "$(X stat -c %U:%G:%a /etc/quictun)" = root:quictun:750 ] || die "/etc/quictun ownership"
X test -f /etc/quictun/client.toml -a -f /etc/quictun/server.toml || die "example configs missing"
X man -w quictund >/dev/null && X man -w quictun-client >/dev/null || die "no man page"
X test -f /usr/lib/sysctl.d/60-quictund.conf || die "no sysctl drop-in"
running=$(X systemctl list-units --no-legend --state=active 'quictun*' | wc -l)
[ "$running" = 0 ] || die "installing started $running unit(s)"
[ "$(X systemctl is-enabled quictund.service || true)" = disabled ] || die "quictund.service enabled"

# ---- 5. systemd-analyze --------------------------------------------------------------------
step "systemd-analyze verify and security"
mkdir -p "$ROOT/tmp/verify"
cp "$ROOT/lib/systemd/system/quictun@.service" "$ROOT/tmp/verify/quictun@verify.service"
cp "$ROOT/lib/systemd/system/quictund.service" "$ROOT/tmp/verify/"
X touch /etc/quictun/verify.toml
verify_err=$(X systemd-analyze verify /tmp/verify/quictun@verify.service /tmp/verify/quictund.service 2>&1 >/dev/null) ||
    die "systemd-analyze verify failed: $verify_err"
X rm -f /etc/quictun/verify.toml
[ -z "$verify_err" ] || die "systemd-analyze verify printed: $verify_err"
say "systemd-analyze verify: nothing on stderr"
X systemd-analyze security quictun@client.service >"$WORK/security.txt" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for quictun@client.service: \([0-9.]*\).*/\1/p' "$WORK/security.txt")
[ -n "$exposure" ] || { cat "$WORK/security.txt" >&2; die "no exposure level"; }
grep '✗' "$WORK/security.txt" | sed 's/^/    /' || true
say "systemd-analyze security quictun@client.service: exposure $exposure"
[ "$(echo "$exposure <= 2.0" | bc)" = 1 ] || die "exposure $exposure > 2.0"
X systemd-analyze security quictund.service 2>&1 | tail -1 | sed 's/^/    /'

# ---- 6. the service to tunnel to: a small HTTP server on loopback ----------------------------
step "start the tunnelled applications: HTTP on the examples' port 22, a UNIX-socket echo"
# client.toml's "ssh" listener goes to port 22 and its "db" listener to PostgreSQL's socket:
# an HTTP server and an echo stand in for them, at exactly those addresses.
mkdir -p "$ROOT/srv/www"
echo "hello through quictund" >"$ROOT/srv/www/hello.txt"
X systemd-run --quiet --unit=e2e-web -p WorkingDirectory=/srv/www \
    /usr/bin/python3 -m http.server --bind 127.0.0.1 --protocol HTTP/1.1 22
wait_for 15 X curl -fsS http://127.0.0.1:22/hello.txt || die "HTTP server did not start"
cat >"$ROOT/srv/unix_echo.py" <<'EOF'
import os, socketserver, sys

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        while line := self.rfile.readline():
            self.wfile.write(line)

path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
server = socketserver.ThreadingUnixStreamServer(path, Echo)
os.chmod(path, 0o666)
server.serve_forever()
EOF
X systemd-run --quiet --unit=e2e-db /usr/bin/python3 /srv/unix_echo.py /run/postgresql/.s.PGSQL.5432
wait_for 15 X test -S /run/postgresql/.s.PGSQL.5432 || die "UNIX echo did not start"
# unix_say SOCKET TEXT: one line through a UNIX socket, prints the answer
unix_say() {
    X python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n"); print(s.makefile().readline().strip())' "$1" "$2"
}

# ---- 7. server and client instances ---------------------------------------------------------
step "the shipped examples, only addresses filled in: enable --now quictun@server, @client"
# ==== operator: the examples as shipped (issue 14 §2) ====================================
# What apt installed is exactly etc/quictun/ of the source tree...
for f in client.toml server.toml; do
    cmp -s "$root/etc/quictun/$f" "$ROOT/etc/quictun/$f" || die "/etc/quictun/$f is not the shipped example"
done
# ...and an admin fills in the addresses and nothing else: this host is both ends.
X sed -i 's|"tcp:10.0.0.0/24:22"|"tcp:127.0.0.1:22"|' /etc/quictun/server.toml
X sed -i -e 's|"10.0.0.1:7500"|"127.0.0.1:7500"|' -e 's|"tcp:10.0.0.5:22"|"tcp:127.0.0.1:22"|' \
    /etc/quictun/client.toml
echo "# e2e: addresses filled in" >>"$ROOT/etc/quictun/client.toml"
for f in client.toml server.toml; do
    changed=$(diff "$root/etc/quictun/$f" "$ROOT/etc/quictun/$f" | grep -c '^>' || true)
    say "$f: $changed line(s) differ from the shipped example:"
    diff "$root/etc/quictun/$f" "$ROOT/etc/quictun/$f" | grep '^>' | sed 's/^/    /' || true
done
# The server first: it writes the certificate the client verifies against.
X systemctl enable --now quictun@server
X test -f /var/lib/quictund/server.pem || die "no self-signed certificate"
# the step server.toml's comments ask for: the server's certificate to the client host
X install -m 0644 /var/lib/quictund/server.pem /etc/quictun/tunnel-server.pem
X quictund check --config /etc/quictun/client.toml --drop-in-dir /etc/quictun/client.d
X systemctl enable --now quictun@client
X systemctl is-active quictun@server quictun@client
# issue 13: both daemons re-executed themselves onto jemalloc (quictund/allocator.py), under
# the unit's hardening and the wrapper's python3 -I, keeping the PID systemd watches
for unit in quictun@server quictun@client; do
    X grep -q libjemalloc "/proc/$(main_pid $unit)/maps" || die "$unit does not run on jemalloc"
    X journalctl -q -u $unit -o cat | grep -q "allocator: jemalloc" || die "$unit: no allocator line"
done
say "both daemons run on jemalloc"
X quictund fingerprint /var/lib/quictund/server.pem
say "$(X ls -l /run/quictun | tail -n +2 | tr -s ' ' | cut -d' ' -f1,3,4,9 | tr '\n' ';')"

# ---- 8. use the tunnel and the API ----------------------------------------------------------
step "GET through the tunnel, then the API (an open tunnel listed)"
wait_for 15 fetch 6500 || die "tunnel on 6500 does not work"
expect_hello 6500
got=$(unix_say /run/quictun/db.sock "through the db listener") || die "the db listener does not tunnel"
[ "$got" = "through the db listener" ] || die "db listener: unexpected answer: $got"
say "both example listeners tunnel: ssh (tcp 6500 -> 127.0.0.1:22), db (unix -> PostgreSQL's socket)"
# A keep-alive connection held open across the reload below.
cat >"$ROOT/srv/holder.py" <<'EOF'
import os, socket, sys, time

s = socket.create_connection(("127.0.0.1", 6500), timeout=30)
f = s.makefile("rb")

def get():
    s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: e2e\r\n\r\n")
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length).decode().strip()

print("1:", get(), flush=True)
open("/run/e2e-holder.1", "w").close()
deadline = time.monotonic() + 120
while not os.path.exists("/run/e2e-holder.go"):
    if time.monotonic() > deadline:
        sys.exit("never told to go on")
    time.sleep(0.1)
print("2:", get(), flush=True)
EOF
X python3 /srv/holder.py >"$WORK/holder.out" 2>&1 &
HOLDER=$!
wait_for 15 X test -f /run/e2e-holder.1 || { cat "$WORK/holder.out" >&2; die "holder"; }
X curl -fsS --unix-socket /run/quictun/client.sock http://localhost/tunnels >"$WORK/tunnels.json"
/usr/bin/python3 - "$WORK/tunnels.json" <<'EOF' || die "the API does not list the open tunnel"
import json, sys
tunnels = json.load(open(sys.argv[1]))
assert [t for t in tunnels if t["listener"] == "ssh"], tunnels
print(f"e2e: GET /tunnels: {len(tunnels)} tunnel(s): "
      + ", ".join(f"{t['listener']} stream {t['streamId']} from {t.get('clientAppAddr')}"
                  for t in tunnels))
EOF
X quictund tunnels --api /run/quictun/client.sock | sed 's/^/    /'
X curl -fsS --unix-socket /run/quictun/server.sock http://localhost/healthz | sed 's/^/    /'
echo

# ---- 9. reload: a drop-in adds a listener; the open tunnel survives ---------------------------
step "systemctl reload (new listener from client.d/, open tunnel survives)"
pid_before=$(main_pid quictun@client)
mkdir -p "$ROOT/etc/quictun/client.d"
cat >"$ROOT/etc/quictun/client.d/web2.toml" <<'EOF'
[[client]]
name = "web2"
listen-on = "tcp:127.0.0.1:6501"
server-endpoint = "127.0.0.1:7500"
ca-file = "/etc/quictun/tunnel-server.pem"
token-source = "tcp:127.0.0.1:22"
EOF
X systemctl reload quictun@client || die "systemctl reload failed"
[ "$(main_pid quictun@client)" = "$pid_before" ] || die "reload restarted the daemon"
expect_hello 6501
X touch /run/e2e-holder.go
wait "$HOLDER" || { cat "$WORK/holder.out" >&2; die "the open tunnel did not survive the reload"; }
grep -qx "2: hello through quictund" "$WORK/holder.out" || { cat "$WORK/holder.out" >&2; die "holder output"; }
say "open tunnel: $(tr '\n' ' ' <"$WORK/holder.out")"
X journalctl --no-pager -o cat -u quictun@client -n 200 | grep -E "reloaded:|quictund reload" | tail -2 | sed 's/^/    /'

# ---- 10. a broken reload fails and changes nothing ------------------------------------------
step "systemctl reload with a broken file (fails; old config keeps running)"
printf '[[client]]\nname = "bad"\nlisten-on = "6600"\nserver-endpoint = "127.0.0.1:7500"\n' \
    >"$ROOT/etc/quictun/client.d/broken.toml"
if X systemctl reload quictun@client 2>"$WORK/reload.err"; then
    die "systemctl reload succeeded with a broken file"
fi
say "systemctl reload failed as it should: $(head -1 "$WORK/reload.err")"
[ "$(X systemctl is-active quictun@client)" = active ] || die "not active after the failed reload"
[ "$(main_pid quictun@client)" = "$pid_before" ] || die "the failed reload restarted the daemon"
X journalctl --no-pager -o cat -u quictun@client -n 50 | grep -q "client.d/broken.toml\|broken.toml: client\[0\].listen-on" ||
    die "the journal does not say why"
X journalctl --no-pager -o cat -u quictun@client -n 50 | grep "quictund reload:" | tail -1 | sed 's/^/    /'
expect_hello 6500
expect_hello 6501
X rm /etc/quictun/client.d/broken.toml
X systemctl reload quictun@client || die "reload after the fix"

# ==== operator: groups (issue 14 §6) =========================================================
step "groups: the API group cannot read keys; unix-socket-group; check and errors say what to do"
X useradd --no-create-home --shell /usr/sbin/nologin e2e-op
X adduser --quiet e2e-op quictun-api
X useradd --no-create-home --shell /usr/sbin/nologin e2e-nobody
for sock in client server; do
    [ "$(X stat -c %G:%a /run/quictun/$sock.sock)" = quictun-api:660 ] ||
        die "/run/quictun/$sock.sock: $(X stat -c %U:%G:%a /run/quictun/$sock.sock), want quictun-api:660"
done
X runuser -u e2e-op -- quictund tunnels --api /run/quictun/client.sock >"$WORK/op-tunnels.txt" ||
    die "a quictun-api member cannot use the API"
head -1 "$WORK/op-tunnels.txt" | grep -q '^UUID ' || die "quictund tunnels: no UUID column"
X runuser -u e2e-op -- cat /etc/quictun/client.toml >/dev/null 2>&1 &&
    die "a quictun-api member can read /etc/quictun"
X runuser -u e2e-op -- cat /etc/quictun/tunnel-server.pem >/dev/null 2>&1 &&
    die "a quictun-api member can read files in /etc/quictun"
X runuser -u e2e-nobody -- curl -fsS --unix-socket /run/quictun/client.sock http://localhost/tunnels \
    >/dev/null 2>&1 && die "a user outside quictun-api can use the API"
say "e2e-op (quictun-api) uses the API, cannot read /etc/quictun; e2e-nobody cannot use the API"

# A UNIX listener handed to an application's group: the unit needs the group (a drop-in, as
# docs/operations.md says), then a restart.
X addgroup --system --quiet e2e-app
mkdir -p "$ROOT/etc/systemd/system/quictun@client.service.d"
printf '[Service]\nSupplementaryGroups=e2e-app\n' \
    >"$ROOT/etc/systemd/system/quictun@client.service.d/e2e-app.conf"
cat >"$ROOT/etc/quictun/client.d/app.toml" <<'EOF'
[[client]]
name = "app"
listen-on = "unix:/run/quictun/app.sock"
unix-socket-group = "e2e-app"
server-endpoint = "127.0.0.1:7500"
ca-file = "/etc/quictun/tunnel-server.pem"
token-source = "tcp:127.0.0.1:22"
EOF
X quictund check --config /etc/quictun/client.toml --drop-in-dir /etc/quictun/client.d
X systemctl daemon-reload
X systemctl restart quictun@client
wait_for 15 X test -S /run/quictun/app.sock || die "no app.sock after the restart"
[ "$(X stat -c %G:%a /run/quictun/app.sock)" = e2e-app:660 ] ||
    die "app.sock: $(X stat -c %U:%G:%a /run/quictun/app.sock), want e2e-app:660"
X curl -fsS --max-time 10 --unix-socket /run/quictun/app.sock http://localhost/hello.txt >/dev/null ||
    die "no tunnel through app.sock"
say "unix-socket-group: app.sock is e2e-app:660 and tunnels"

# A group the daemon is not in: `check` warns in one line, the reload fails and says what to do
X addgroup --system --quiet e2e-other
sed 's/e2e-app/e2e-other/; s/app\.sock/other.sock/; s/"app"/"other"/' \
    "$ROOT/etc/quictun/client.d/app.toml" >"$ROOT/etc/quictun/client.d/other.toml"
X quictund check --config /etc/quictun/client.toml --drop-in-dir /etc/quictun/client.d \
    2>"$WORK/check.err" || die "check failed (it should warn): $(cat "$WORK/check.err")"
grep -q "not a member of group 'e2e-other'.*SupplementaryGroups=e2e-other" "$WORK/check.err" ||
    die "check did not warn about e2e-other: $(cat "$WORK/check.err")"
say "check: $(cat "$WORK/check.err")"
X systemctl reload quictun@client 2>/dev/null && die "a reload with a group the daemon is not in succeeded"
X journalctl --no-pager -o cat -u quictun@client -n 30 | grep "quictund reload:" | tail -1 >"$WORK/reload-group.txt"
grep -q "SupplementaryGroups=e2e-other" "$WORK/reload-group.txt" ||
    die "the failed reload does not say what to do: $(cat "$WORK/reload-group.txt")"
sed 's/^/    /' "$WORK/reload-group.txt"
X rm /etc/quictun/client.d/other.toml
X systemctl reload quictun@client || die "reload after removing other.toml"
# [api] group = an unknown group: check catches it before a restart would
printf '[api]\ngroup = "e2e-no-such-group"\n' >"$ROOT/etc/quictun/client.d/api.toml"
X quictund check --config /etc/quictun/client.toml --drop-in-dir /etc/quictun/client.d \
    2>"$WORK/check.err" && die "check accepted an unknown [api] group"
say "check: $(cat "$WORK/check.err")"
grep -q "group 'e2e-no-such-group' does not exist" "$WORK/check.err" || die "check's message"
X rm /etc/quictun/client.d/api.toml
# ==== end operator: groups ===================================================================

# ---- 11. the test suite inside the unit's sandbox ----------------------------------------------
if [ "$SANDBOX_TESTS" != none ]; then
    [ "$SANDBOX_TESTS" = all ] && SANDBOX_TESTS=tests
    step "pytest inside quictun@.service's sandbox: $SANDBOX_TESTS"
    mkdir -p "$ROOT/etc/systemd/system/quictun@selftest.service.d"
    cat >"$ROOT/etc/systemd/system/quictun@selftest.service.d/pytest.conf" <<EOF
# Same unit, same hardening; only the command differs.
[Unit]
AssertPathExists=
[Service]
Type=oneshot
ExecStart=
ExecStart=/usr/lib/quictund/bin/python3 -m pytest -q -p no:cacheprovider -c /srv/qt-tests/pyproject.toml --rootdir /srv/qt-tests $(for t in $SANDBOX_TESTS; do printf '/srv/qt-tests/%s ' "$t"; done)
ExecReload=
WorkingDirectory=/tmp
Environment=PYTHONPATH=/srv/qt-tests/site PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
Restart=no
WatchdogSec=0
TimeoutStartSec=1200
EOF
    X systemctl daemon-reload
    ok=1
    X systemctl start quictun@selftest || ok=0
    X journalctl --no-pager -o cat -u quictun@selftest >"$WORK/pytest.log"
    tail -5 "$WORK/pytest.log" | sed 's/^/    /'
    [ $ok = 1 ] || { cat "$WORK/pytest.log" >&2; die "the test suite failed inside the sandbox"; }
    rm -rf "$ROOT/etc/systemd/system/quictun@selftest.service.d"
    X systemctl daemon-reload
fi

# ---- 12. stop --------------------------------------------------------------------------------
step "systemctl stop (exit 0, socket files gone, other instance unaffected)"
# Running since step 7 with WatchdogSec=30s: the pings arrived, nothing restarted.
for unit in quictun@server quictun@client; do
    restarts=$(X systemctl show -p NRestarts --value "$unit")
    watchdog=$(X systemctl show -p WatchdogUSec --value "$unit")
    [ "$restarts/$watchdog" = 0/30s ] || die "$unit: NRestarts=$restarts WatchdogUSec=$watchdog"
done
say "up for $(( ($(X cat /proc/uptime | cut -d. -f1) * 1000000 - $(X systemctl show -p ActiveEnterTimestampMonotonic --value quictun@server)) / 1000000 )) s with the watchdog armed, no restarts"
X systemctl stop quictun@client
[ "$(X systemctl show -p Result --value quictun@client)" = success ] || die "client stop result"
[ "$(X systemctl show -p ExecMainStatus --value quictun@client)" = 0 ] || die "client exit status"
X test ! -e /run/quictun/client.sock || die "client.sock left behind"
X test -S /run/quictun/server.sock || die "stopping the client removed the server's socket"
[ "$(X systemctl is-active quictun@server)" = active ] || die "server stopped too"
X systemctl stop quictun@server
[ "$(X systemctl show -p ExecMainStatus --value quictun@server)" = 0 ] || die "server exit status"
X test ! -e /run/quictun/server.sock || die "server.sock left behind"
X journalctl --no-pager -o cat -u quictun@server -n 5 | sed 's/^/    /'
X systemctl start quictun@server quictun@client
wait_for 15 fetch 6500 || die "no tunnel after the restart"

# ---- 13. upgrade ------------------------------------------------------------------------------
step "upgrade to a rebuilt package (running instances restarted)"
old_version=$(X dpkg-query -W -f='${Version}' quictund)
new_version=$old_version+e2e1
dpkg-deb -R "$DEB" "$WORK/repack"
sed -i "s/^Version: .*/Version: $new_version/" "$WORK/repack/DEBIAN/control"
dpkg-deb -b -Zxz -z1 "$WORK/repack" "$ROOT/srv/repo/quictund_${new_version}_amd64.deb" >/dev/null
(cd "$ROOT/srv/repo" && dpkg-scanpackages --multiversion . >Packages 2>/dev/null)
pids_before="$(main_pid quictun@server) $(main_pid quictun@client)"
X apt-get update -qq
X apt-get install -y -qq -o Dpkg::Options::=--force-confold quictund >"$WORK/apt.log" 2>&1 ||
    { cat "$WORK/apt.log" >&2; die "upgrade"; }
[ "$(X dpkg-query -W -f='${Version}' quictund)" = "$new_version" ] || die "not upgraded"
pids_after="$(main_pid quictun@server) $(main_pid quictun@client)"
say "$old_version -> $new_version; MainPIDs $pids_before -> $pids_after"
for pid in $pids_after; do
    [ "$pid" != 0 ] || die "an instance is not running after the upgrade"
    case " $pids_before " in *" $pid "*) die "an instance was not restarted" ;; esac
done
X grep -q "e2e: addresses filled in" /etc/quictun/client.toml || die "the upgrade replaced a changed conffile"
wait_for 15 fetch 6500 || die "no tunnel after the upgrade"
expect_hello 6501

# ---- 14. purge ------------------------------------------------------------------------------
step "apt purge (instances stopped; the package's files gone, the admin's kept)"
# ==== operator: purge keeps what the admin made (issue 14 §6) ================================
echo "notes an admin keeps here" >"$ROOT/etc/quictun/admin-notes.txt"
X apt-get purge -y -qq quictund >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "purge"; }
left=$(X systemctl list-units --no-legend --state=active 'quictun*' | wc -l)
[ "$left" = 0 ] || die "$left quictun unit(s) still active after purge"
for path in /etc/quictun/client.toml /etc/quictun/server.toml /var/lib/quictund /usr/lib/quictund \
    /usr/bin/quictund /lib/systemd/system/quictun@.service /usr/lib/sysctl.d/60-quictund.conf; do
    X test ! -e "$path" || die "$path left behind by purge"
done
for path in /etc/quictun/admin-notes.txt /etc/quictun/tunnel-server.pem \
    /etc/quictun/client.d/web2.toml /etc/systemd/system/quictun@client.service.d/e2e-app.conf; do
    X test -e "$path" || die "purge removed $path, which the admin made"
done
links=$(X find /etc/systemd/system -type l -name 'quictun*' | wc -l)
[ "$links" = 0 ] || die "$links quictun enablement link(s) left behind"
status=$(X dpkg-query -W -f='${db:Status-Abbrev}' quictund 2>/dev/null || true)
case $status in "" | pn*) ;; *) die "dpkg status after purge: $status" ;; esac
say "purged: no units, package files or links; kept: $(X find /etc/quictun /etc/systemd/system/quictun@client.service.d -type f | tr '\n' ' ')"
say "(the quictun user and the quictun, quictun-api groups stay, as Debian does)"
# ==== end operator: purge ====================================================================

# ---- 15. shut down ----------------------------------------------------------------------------
step "power off the container"
X systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
wait "$NSPAWN" 2>/dev/null || true
NSPAWN=""
end_step

say "=== step times ==="
printf 'e2e: %s\n' "${SUMMARY[@]}"
say "total $(printf '%.1f' "$(echo "$(date +%s.%N) - $T_ALL" | bc)") s: PASSED"
