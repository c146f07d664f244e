#!/usr/bin/env bash
# Builds a second CPython for CI from Debian's source tarball, into .ci/python<X.Y>, and prints
# the interpreter's path. The machine's own Python (Debian bookworm: 3.11) is the lowest this
# project supports and .ci/run takes a 3.12 (what Azure runs) from the machine; this one is the
# newest that Debian's stable release has the source of, so that the other branch of
# requirements.txt (azure-functions 2.x, Python 3.13 and later) is tested too.
# 3-5 minutes on 2 cores (no PGO: only correctness is tested with it).
set -euo pipefail
cd "$(dirname "$0")"
mm=3.13 version=3.13.5
sha256=93e583f243454e6e9e4588ca2c2662206ad961659863277afcdb96801647d640   # Debian trixie's
file=python${mm}_${version}.orig.tar.xz
prefix=$PWD/python$mm
modules='import ssl, sqlite3, zlib, lzma, bz2, ctypes, readline'
if ! "$prefix/bin/python$mm" -c "$modules" 2>/dev/null; then
  trap 'rm -rf "src-$mm" "$file"' EXIT
  rm -rf "$prefix"
  curl -fsS --retry 3 --max-time 600 -o "$file" \
    "http://deb.debian.org/debian/pool/main/p/python$mm/$file"
  echo "$sha256  $file" | sha256sum -c --quiet -
  rm -rf "src-$mm" && mkdir "src-$mm" && tar -xJf "$file" -C "src-$mm" --strip-components=1
  (cd "src-$mm" && ./configure -q --prefix="$prefix" --with-ensurepip=install >/dev/null &&
     make -s -j"$(nproc)" >/dev/null 2>&1 && make -s altinstall >/dev/null 2>&1)
  "$prefix/bin/python$mm" -c "$modules"
fi
echo "$prefix/bin/python$mm"
