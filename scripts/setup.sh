#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine, idempotently: the headless OpenGL
# library MuJoCo renders with, and a project-local virtualenv (.venv) holding the package and its pinned
# dependencies (constraints.txt pins torch and torchvision as a matched pair). One line per step; pip's
# full output goes to .venv/install.log and is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q libOSMesa; then
    say "system library libosmesa6 (headless MuJoCo rendering): present"
else
    say "system library libosmesa6 (headless MuJoCo rendering): installing with apt-get"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends libosmesa6 >/dev/null
fi

python_bin="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then
    say "virtualenv .venv: present ($(.venv/bin/python --version))"
else
    if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "setup: error: $python_bin is not Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    say "virtualenv .venv: creating with $("$python_bin" --version)"
    "$python_bin" -m venv .venv
fi

stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
    say "packages: up to date with constraints.txt"
    exit 0
fi
log=.venv/install.log
say "packages: installing the pinned set from constraints.txt (the first time downloads several GB of" \
    "torch; log: $log)"
pip=(.venv/bin/python -m pip --disable-pip-version-check --no-input)
started=$SECONDS
if ! { "${pip[@]}" install --upgrade pip && "${pip[@]}" install -c constraints.txt -e ".[dev]"; } >"$log" 2>&1
then
    tail -n 40 "$log" >&2
    echo "setup: error: pip install failed (last 40 lines above; all of it in $log)" >&2
    exit 1
fi
rm -f .venv/.installed-*
touch "$stamp"
say "packages: installed in $((SECONDS - started)) s"
