#!/bin/sh
# Build quic-tun's client and server (https://github.com/kungze/quic-tun) from a checkout of
# its source, with Debian's Go toolchain and Debian-packaged Go libraries only (no module
# proxy): GOPATH mode, /usr/share/gocode on GOPATH.  The bench compares quictund with them
# side by side (QUICTUN_BIN=OUT_DIR, see bench/README.md).
#
#     bench/quictun-go/build.sh SRC_DIR OUT_DIR      # as root (installs its apt packages)
#
# Idempotent: the apt packages are installed only when missing, the build works in a fresh
# temporary copy of SRC_DIR (the source is never modified), and OUT_DIR/quictun-server and
# OUT_DIR/quictun-client are replaced.  quic-tun asks for quic-go 0.26; Debian (bookworm)
# packages 0.29, whose quic.Config takes `KeepAlivePeriod time.Duration` where 0.26 took
# `KeepAlive bool`, so the copy is patched to `KeepAlivePeriod: 10 * time.Second` (0.29 keeps
# the period below half the idle timeout itself; the bench's tunnels never sit idle anyway).
set -eu

if [ $# -ne 2 ]; then
	echo "usage: $0 SRC_DIR OUT_DIR  (SRC_DIR: a checkout of github.com/kungze/quic-tun)" >&2
	exit 2
fi
src=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
[ -f "$src/server/cmd/main.go" ] && [ -f "$src/client/cmd/main.go" ] || {
	echo "$0: $src is not a quic-tun checkout (no server/cmd/main.go, client/cmd/main.go)" >&2
	exit 2
}

packages="golang-go golang-github-lucas-clemente-quic-go-dev golang-github-spf13-cobra-dev
golang-github-spf13-pflag-dev golang-github-spf13-viper-dev golang-go.uber-zap-dev
golang-github-google-uuid-dev golang-github-gosuri-uitable-dev"
missing=""
for p in $packages; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "quictun-go: installing$missing"
	# shellcheck disable=SC2086  # one word per package
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing ||
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing; }
fi

work=$(mktemp -d /tmp/quictun-go-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
pkg="$work/gopath/src/github.com/kungze/quic-tun"
mkdir -p "$(dirname "$pkg")"
cp -a "$src" "$pkg"
rm -rf "$pkg/.git" "$pkg/vendor"
grep -rl --include='*.go' 'KeepAlive: *true' "$pkg" |
	xargs -r sed -i 's/KeepAlive: *true/KeepAlivePeriod: 10 * time.Second/'
# the patched files need "time"; add the import where it is missing
for f in $(grep -rl --include='*.go' 'KeepAlivePeriod: 10 \* time.Second' "$pkg"); do
	grep -q '"time"' "$f" || sed -i '0,/^import (/s//import (\n\t"time"/' "$f"
done

export GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOCACHE="$work/cache" GOFLAGS=
cd "$pkg"
go build -trimpath -o "$out/quictun-server.new" ./server/cmd
go build -trimpath -o "$out/quictun-client.new" ./client/cmd
mv "$out/quictun-server.new" "$out/quictun-server"
mv "$out/quictun-client.new" "$out/quictun-client"
echo "quictun-go: built $out/quictun-server and $out/quictun-client ($(go version))"
