# Shared by scripts/quickstart and scripts/test (sourced, not run): Debian packages through
# apt-get, the project's own virtual environment (.venv) and the gitsync command on PATH.
# Every step either works or stops the script with the reason; nothing is skipped silently.

ME=$(basename "$0")
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$PROJECT/.venv"

die() { echo "$ME: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# need_apt CHECK PACKAGE: queue PACKAGE for apt_install unless the shell test CHECK passes.
APT_MISSING=()
need_apt() { eval "$1" >/dev/null 2>&1 || APT_MISSING+=("$2"); }

# A Python of at least 3.11 that can make a virtual environment with pip in it (Debian ships
# venv's pip bootstrap as python3-venv).
python_ok() { python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))'; }

apt_install() {
  [ ${#APT_MISSING[@]} -eq 0 ] && return 0
  if ! is_root; then
    die "needs ${APT_MISSING[*]}: run it as root (or with sudo), or install them yourself (apt-get install ${APT_MISSING[*]})"
  fi
  command -v apt-get >/dev/null || die "apt-get not found; install ${APT_MISSING[*]} your usual way, then run this again"
  echo "$ME: installing ${APT_MISSING[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed (see above); check the machine's network and /etc/apt/sources.list"
  # Packages with a service (openssh-server) must not start a system-wide one while they install.
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  fi
  local code=0
  apt-get install -y -qq --no-install-recommends "${APT_MISSING[@]}" >/dev/null || code=$?
  [ -n "$policy" ] && rm -f "$policy"
  [ "$code" = 0 ] || die "apt-get install ${APT_MISSING[*]} failed (exit $code, see above)"
  APT_MISSING=()
}

# venv_install EXTRAS: .venv with the project installed in it (editable, so this checkout is what
# runs). Re-running is cheap: pip runs again only when pyproject.toml or the extras changed.
venv_install() {
  local spec=".${1:+[$1]}"
  python_ok || die "python3 (3.11 or newer, with venv) is missing; as root: apt-get install python3 python3-venv"
  if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "$ME: $VENV is broken (its Python moved?); making it again"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "$ME: making the virtual environment $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (see above)"
  fi
  local stamp="$VENV/.gitsync-installed" want
  want="$spec $(sha256sum "$PROJECT/pyproject.toml" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "$ME: installing gitsync${1:+[$1]} into $VENV (pip)"
    (cd "$PROJECT" && PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec") \
      || die "pip install failed (see above); the package index must be reachable"
    echo "$want" > "$stamp"
  fi
}

# gitsync_on_path: /usr/local/bin/gitsync -> .venv/bin/gitsync (as root); sets GITSYNC to the command.
gitsync_on_path() {
  GITSYNC="$VENV/bin/gitsync"
  local link=/usr/local/bin/gitsync
  if ! is_root; then
    echo "$ME: gitsync is $GITSYNC (as root this script links it into /usr/local/bin)"
    return 0
  fi
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "$ME: $link exists and is not ours; leaving it. This checkout's gitsync is $GITSYNC" >&2
    return 0
  fi
  ln -sfn "$GITSYNC" "$link"
}
