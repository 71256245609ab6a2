#!/usr/bin/env bash
# `make deb`: build dist/quictund_<version>_<arch>.deb on Debian 12, then run lintian on it.
# Installs its build dependencies with apt-get when they are missing (CI is a fresh machine).
# The venv inside the package is built with /usr/bin/python3 (debian/rules), whatever python3
# comes first on PATH.  LINTIAN=0 skips lintian.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/dist}
start=$(date +%s)

need=()
for pkg in debhelper dpkg-dev python3-venv python3-dev gcc lintian; do
    [ "$pkg" = lintian ] && [ "${LINTIAN:-1}" = 0 ] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "deb: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -l "$root/packaging/deb/debian/changelog" -S Version)
upstream=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/quictund/__init__.py")
if [ "${version%%[-+~]*}" != "$upstream" ]; then
    echo "deb: debian/changelog says $version but quictund/__init__.py says $upstream" >&2
    exit 1
fi

work=$(mktemp -d /tmp/quictund-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/quictund-$upstream
mkdir -p "$src"
# Only what the package is made of: no .venv, .git or caches.
(cd "$root" && tar -cf - --exclude=__pycache__ --exclude="*.so" --exclude="*.c" pyproject.toml setup.py README.md LICENSE quictund etc docs packaging) |
    tar -xf - -C "$src"
cp -r "$root/packaging/deb/debian" "$src/debian"
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc -j2 >"$work/build.log" 2>&1) || {
    tail -60 "$work/build.log" >&2
    echo "deb: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
mkdir -p "$out"
deb=$(ls "$work"/quictund_*.deb)
rm -f "$out"/quictund_*.deb
mv "$deb" "$out/"
deb=$out/$(basename "$deb")
echo "deb: built $deb ($(du -h "$deb" | cut -f1)) in $(($(date +%s) - start)) s"
if [ "${LINTIAN:-1}" != 0 ]; then
    lstart=$(date +%s)
    # errors fail the build; warnings are listed (and explained in docs/operations.md)
    lintian --fail-on error --tag-display-limit 0 "$deb"
    echo "deb: lintian: no errors ($(($(date +%s) - lstart)) s)"
fi
