#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine, idempotently: the headless OpenGL
# library MuJoCo renders with, and a project-local virtualenv (.venv) holding the package and its pinned
# dependencies (constraints.txt pins torch and torchvision as a matched pair). One line per step; pip's
# full output goes to .venv/install.log and is shown only when the install fails.
#
#   bash scripts/setup.sh [--browser]   # --browser: also Debian's chromium, for the browser test of the
#                                       # UIs (tests/test_ui.py, `make test-ui`); not needed otherwise
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

browser=0
for arg in "$@"; do
    case "$arg" in
        --browser) browser=1 ;;
        *) echo "setup: error: unknown option $arg (known: --browser)" >&2; exit 2 ;;
    esac
done

apt_updated=0
apt_install() {  # Debian packages, without their recommends; the package lists are refreshed once per run
    local sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    if [ "$apt_updated" -eq 0 ]; then
        $sudo_cmd apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q libOSMesa; then
    say "system library libosmesa6 (headless MuJoCo rendering): present"
else
    say "system library libosmesa6 (headless MuJoCo rendering): installing with apt-get"
    apt_install libosmesa6
fi

if [ "$browser" -eq 1 ]; then
    if [ -n "${LEWM_CHROMIUM:-}" ]; then
        if [ ! -x "$LEWM_CHROMIUM" ]; then
            echo "setup: error: LEWM_CHROMIUM=$LEWM_CHROMIUM is not an executable" >&2
            exit 1
        fi
        say "browser for the UI test: $LEWM_CHROMIUM (LEWM_CHROMIUM)"
    elif command -v chromium >/dev/null 2>&1; then
        say "browser chromium (UI test, headless): present ($(chromium --version 2>/dev/null | head -n 1))"
    else
        say "browser chromium (UI test, headless): installing Debian's chromium with apt-get (~300 MB)"
        apt_install chromium
        say "browser chromium: installed ($(chromium --version 2>/dev/null | head -n 1))"
    fi
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
