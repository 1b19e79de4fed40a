# Shared set-up for the run and test scripts: what a fresh machine lacks,
# installed by name; the build redone only when a source is newer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_debian_packages PACKAGE:COMMAND ... installs a package when its
# command is missing; PACKAGE: (no command: a library, plugins) when dpkg does
# not have it installed.
ensure_debian_packages() {
  local missing=() package command
  for pair in "$@"; do
    package="${pair%%:*}" command="${pair#*:}"
    if [ -n "$command" ]; then
      command -v "$command" >/dev/null 2>&1 || missing+=("$package")
    else
      [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" = 'install ok installed' ] || missing+=("$package")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "Installing Debian packages: ${missing[*]}" >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 && return 0
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return 0
  echo "cargo is missing: install Rust (rustup) to build the native core" >&2
  exit 1
}

ensure_node_modules() {
  if [ ! -d node_modules ] || [ package.json -nt node_modules ] || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules ]; }; then
    if [ -f package-lock.json ]; then npm ci --no-audit --no-fund >&2; else npm install --no-audit --no-fund >&2; fi
    touch node_modules
  fi
}

# Rebuilds the native addon and the TypeScript when any of their sources
# changed. `ensure_build test-faults` builds the addon the test suite uses,
# with the FUSE_EXPORT_TEST_* fault knobs; plain `ensure_build` the one users
# get, without them. native/.features records which one native/ holds.
ensure_build() {
  local features="${1:-}"
  ensure_node_modules
  local addon
  addon=$(ls native/*.node 2>/dev/null | head -n1 || true)
  if [ -z "$addon" ] || [ -n "$(find crates Cargo.toml -newer "$addon" -type f -print -quit)" ] ||
    [ "$(cat native/.features 2>/dev/null)" != "$features" ]; then
    ensure_rust
    npm run --silent build:native -- ${features:+--features "$features"} >&2
    echo "$features" > native/.features
  fi
  if [ ! -f dist/cli/main.js ] || [ -n "$(find ts tsconfig.json package.json -newer dist/cli/main.js -type f -print -quit)" ]; then
    npm run --silent build:ts >&2
    chmod +x dist/cli/main.js
  fi
}

# The generated loader (native/index.cjs, native/index.d.cts) is committed:
# fails when it differs from what the last build generated. Only inside a
# git work tree (an unpacked tarball has nothing to compare with).
check_generated_loader() {
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || return 0
  if ! git diff --exit-code -- native/index.cjs native/index.d.cts; then
    echo "native/index.cjs or native/index.d.cts differ from what the build generated: commit the generated files" >&2
    return 1
  fi
}
