#!/usr/bin/env bash
# Proves the npm packages work without a Rust toolchain: packs the main
# package and this platform's binary package, installs both into an empty
# directory with cargo hidden from PATH, then runs `npx fuse-export
# --version` and a real export (root needed for the export part). The addon
# is the product build: it must not contain the test-only fault knobs.
source "$(dirname "$0")/lib.sh"
ensure_build

platform=linux-x64-gnu
if grep -a -q FUSE_EXPORT_TEST_ "native/fuse-export.$platform.node"; then
  echo "FAIL: the addon to ship contains the test suite's FUSE_EXPORT_TEST_ knobs" >&2; exit 1
fi
work="$(mktemp -d /tmp/fuse-export-pack.XXXXXX)"
pid=""
original_path="$PATH"
cleanup() {
  export PATH="$original_path"
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  grep -q " $work/" /proc/self/mountinfo && umount -l "$work/install/disk.raw" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The main package as `napi prepublish` publishes it: with the per-platform
# packages as optional dependencies.
stage="$work/stage"
mkdir -p "$stage"
cp package.json "$stage/"
node -e '
  const fs = require("fs");
  const file = process.argv[1];
  const pkg = JSON.parse(fs.readFileSync(file, "utf8"));
  pkg.optionalDependencies = Object.fromEntries(
    fs.readdirSync("npm").map((dir) => [`${pkg.name}-${dir}`, pkg.version]));
  fs.writeFileSync(file, JSON.stringify(pkg, null, 2));
' "$stage/package.json"
npm pack --silent --dry-run --json 2>/dev/null | node -e '
  const files = JSON.parse(require("fs").readFileSync(0, "utf8"))[0].files.map((f) => f.path);
  console.log(files.filter((f) => f !== "package.json").join("\n"));
' | while read -r file; do mkdir -p "$stage/$(dirname "$file")"; cp "$file" "$stage/$file"; done
main_tgz=$(cd "$stage" && npm pack --silent --pack-destination "$work" 2>/dev/null | tail -n1)
cp native/fuse-export.$platform.node "npm/$platform/"
platform_tgz=$(cd "npm/$platform" && npm pack --silent --pack-destination "$work" 2>/dev/null | tail -n1)
rm -f "npm/$platform/fuse-export.$platform.node"
if tar -tzf "$work/$main_tgz" | grep -q '\.node$'; then
  echo "FAIL: the main package carries a native binary" >&2; exit 1
fi

# A PATH without cargo, rustc or rustup.
bare="$work/bin"
mkdir -p "$bare"
for tool in node npm npx sh bash env dd cmp truncate sleep cat seq tar grep; do
  ln -s "$(command -v "$tool")" "$bare/$tool"
done
mkdir -p "$work/install" && cd "$work/install"
export PATH="$bare"
if command -v cargo >/dev/null 2>&1; then echo "FAIL: cargo is still on PATH" >&2; exit 1; fi
npm init -y >/dev/null
npm install --no-audit --no-fund --loglevel=error "$work/$main_tgz" "$work/$platform_tgz" >/dev/null

version=$(npx --no-install fuse-export --version)
echo "npx fuse-export --version: $version"
[ "$version" = "$(node -p "require('$ROOT/package.json').version")" ]

truncate -s 16M disk.img && : > disk.raw
dd if=/dev/urandom of=data bs=1M count=4 status=none
node_modules/.bin/fuse-export --writable --log-format json --pidfile export.pid disk.img disk.raw > /dev/null 2> export.log &
pid=$!
for _ in $(seq 100); do [ -s export.pid ] && break; sleep 0.1; done
[ -s export.pid ] || { cat export.log >&2; echo "FAIL: the export did not become ready" >&2; exit 1; }
dd if=data of=disk.raw bs=1M conv=notrunc status=none
cmp -n 4194304 data disk.raw
kill -TERM "$pid"; wait "$pid"; pid=""
cmp -n 4194304 data disk.img
echo "pack-check: installed without cargo, exported, wrote and read back 4 MiB: OK"
