#!/usr/bin/env bash
# Makes, or keeps, a virtualenv for the Makefile:
#   tools/venv.sh PYTHON VENV ORIGIN           make VENV if it should be (re)made
#   tools/venv.sh --stale PYTHON VENV ORIGIN   print "stale" if an existing VENV should be
#
# PYTHON is the interpreter that makes VENV: a command (a path with spaces is one), or a command
# and its arguments (PYTHON="python3 -X dev"). ORIGIN is make's $(origin PYTHON): "command line"
# or "environment" when the user chose one, "file" for the Makefile's python3.
#
# - An existing VENV is kept while its interpreter runs, is the version it was made with, is one
#   the pinned packages support and has pip, unless the user chose a PYTHON of another version.
#   Otherwise it is made anew (`python -m venv --clear`: `python -m venv` over an existing one
#   keeps its old interpreter, so a .venv whose Python was removed or upgraded, or that an
#   unsupported python3 made before, would stay broken). A PYTHON exported for other tools
#   (node-gyp reads it) that is not a supported Python does not count as a choice.
# - PYTHON must be a supported version: anything else is refused here, saying what to do,
#   instead of failing in pip with "Could not find a version that satisfies the requirement".
#   Nothing is removed before that check.
#
# Supported: the versions that every pinned package has wheels for and that tests/ pass on.
set -euo pipefail
stale_only=false
if [ "${1:-}" = --stale ]; then stale_only=true; shift; fi
python=$1 venv=$2 origin=${3:-file}
# PYTHON as one command (a path with spaces) if it is one, else as words ("python3 -X dev").
if [[ "$python" == *[[:space:]]* ]] && ! command -v -- "$python" >/dev/null 2>&1; then
  read -r -a pycmd <<< "$python"
else
  pycmd=("$python")
fi
case $origin in "command line"|environment*|override) chosen=true ;; *) chosen=false ;; esac
supported="3.11 3.12 3.13 3.14"

version() { "$@" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
is_supported() { [[ " $supported " == *" $1 "* ]]; }

# Why an existing VENV should be made anew; nothing if it should be kept.
why_stale() {
  local have made want
  have=$(version "$venv/bin/python" || true)
  # venv writes "version = 3.11.7", virtualenv and uv "version_info = 3.11.7"
  made=$(sed -n 's/^version\(_info\)\{0,1\} *= *\([0-9]*\.[0-9]*\).*/\2/p' "$venv/pyvenv.cfg" |
         head -n 1)
  if [ -z "$have" ]; then
    echo "$venv/bin/python no longer runs (its Python was removed or moved)"
  elif [ -n "$made" ] && [ "$made" != "$have" ]; then
    echo "$venv was made with Python $made and its python is now $have (upgraded in place)"
  elif ! is_supported "$have"; then
    echo "$venv has Python $have, which the pinned packages do not support"
  elif ! compgen -G "$venv/lib/python$have/site-packages/pip/__init__.py" >/dev/null; then
    echo "$venv has no pip (its making was interrupted, or another tool made it)"
  elif $chosen; then
    want=$(version "${pycmd[@]}" || true)
    if [ "$want" != "$have" ]; then
      case $origin in environment*) is_supported "$want" || return 0 ;; esac
      echo "$venv has Python $have and PYTHON=$python is another version"
    fi
  fi
}

if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
  $stale_only && exit 0
  echo "make: $venv exists and is not a virtualenv (no pyvenv.cfg): move it away first" >&2
  exit 1
fi
why=""
if [ -f "$venv/pyvenv.cfg" ]; then
  why=$(why_stale)
  if $stale_only; then
    [ -n "$why" ] && echo stale
    exit 0
  fi
  [ -z "$why" ] && exit 0
fi
$stale_only && exit 0

want=$(version "${pycmd[@]}" || true)
if [ -z "$want" ]; then
  echo "make: cannot run '$python' (PYTHON). Install one of Python ${supported// /, } and pass it," \
       "e.g. make serve PYTHON=python3.12" >&2
  exit 1
fi
if ! is_supported "$want"; then
  echo "make: $python is Python $want; this project needs Python ${supported// /, }" \
       "(what its pinned packages have wheels for). Install one and pass it," \
       "e.g. make serve PYTHON=python3.12" >&2
  exit 1
fi
[ -n "$why" ] && echo "make: $why: making $venv anew"
if [ -L "$venv" ]; then
  rm -f "$venv"                        # a symlink: made here instead, its target left alone
fi
exec "${pycmd[@]}" -m venv --clear "$venv"   # --clear empties it in place: a mount point stays
