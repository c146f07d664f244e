#!/usr/bin/env bash
# Python 3.14 for CI, the newest the project supports (README, tools/venv.sh), from Debian
# unstable's binary packages, and prints the interpreter's path. The registries CI may reach serve
# unstable's .debs but not its Python sources, so it cannot be built as .ci/python.sh builds 3.13.
#
# Nothing is installed on the machine: apt downloads the packages (checked against Debian's signed
# Release file with the machine's debian-archive-keyring) into a folder of its own, they are
# unpacked with dpkg-deb -x into .ci/python<X.Y>-sid, and the interpreter is pointed at the glibc
# unpacked beside it (unstable's is newer than the machine's): its loader and library path are
# rewritten with patchelf 0.14.3, Debian bookworm's, checked by its sha256 (unstable's 0.18.0
# writes a python3.14 that crashes at start). A virtualenv made from it gets pip from the
# python<X.Y>-venv package's wheels. Under a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
mm=3.14
root=$PWD/python$mm-sid
python=$root/usr/bin/python$mm
lib=$root/usr/lib/x86_64-linux-gnu
modules='import ssl, sqlite3, zlib, lzma, bz2, ctypes, readline, decimal, venv, ensurepip'
if ! "$python" -c "$modules" 2>/dev/null; then
  work=$PWD/sid-apt
  trap 'rm -rf "$work"' EXIT
  rm -rf "$root" "$work"
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$root"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "deb [signed-by=$keyring] http://deb.debian.org/debian sid main" > "$work/sources.list"
  : > "$work/status"
  apt=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o Dir::State="$work" -o Dir::State::Lists="$work/lists"
       -o Dir::State::status="$work/status" -o Dir::Cache="$work"
       -o Dir::Cache::Archives="$work/archives" -o APT::Architecture=amd64
       -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
  apt-get "${apt[@]}" -q update >/dev/null
  # The interpreter with venv and pip's wheels and what the pinned wheels load besides glibc
  # (libstdc++, libgomp), with everything they depend on.
  pkgs=$(apt-cache "${apt[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances \
           "python$mm-venv" libstdc++6 libgomp1 | grep '^[a-z0-9]' | sort -u)
  # shellcheck disable=SC2086  # one word per package
  (cd "$work/archives" && apt-get "${apt[@]}" -q download $pkgs >/dev/null)
  for deb in "$work"/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # Absolute links (sitecustomize.py -> /etc/python3.14/…) to their unpacked targets.
  find "$root" -type l -lname '/*' | while read -r link; do
    target=$(readlink "$link")
    if [ -e "$root$target" ]; then ln -sfn "$root$target" "$link"; fi
  done
  patchelf=patchelf_0.14.3-1+b1_amd64.deb
  curl -fsS --retry 3 --max-time 300 -o "$work/$patchelf" \
    "http://deb.debian.org/debian/pool/main/p/patchelf/$patchelf"
  echo "0364b90e81faabbb9569076063952c7bcbf07f83d954a2f2602a163d65be60e6  $work/$patchelf" |
    sha256sum -c --quiet -
  dpkg-deb -x "$work/$patchelf" "$work/patchelf"
  "$work/patchelf/usr/bin/patchelf" --set-interpreter "$lib/ld-linux-x86-64.so.2" \
    --force-rpath --set-rpath "$lib" "$python"
  # ensurepip takes pip from the python-wheels folder compiled in: the one unpacked here.
  sed -i "s#'/usr/share/python-wheels/'#'$root/usr/share/python-wheels/'#" \
    "$root/usr/lib/python$mm"/_sysconfigdata_*.py
  "$python" -c "$modules"
fi
echo "$python"
