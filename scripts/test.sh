#!/usr/bin/env bash
# `npm test`: installs the Debian test tools it uses, builds when needed,
# then runs the Rust unit tests, type-checks the ava specs (TypeScript, run
# through tsx) and runs the end-to-end suite (which mounts for real: run it
# as root on Linux with /dev/fuse).
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fuse3:fusermount3 fio:fio strace:strace qemu-utils:qemu-io e2fsprogs:mkfs.ext4 mount:losetup util-linux:setpriv python3:/usr/bin/python3 fdisk:sfdisk nbdkit:nbdkit qemu-utils:qemu-nbd
# The servers of test/servers.test.ts (test/helpers/servers.ts): HTTPS
# certificates, an iSCSI target, sshd with ssh-agent; and QEMU's curl, iscsi
# and ssh block drivers, which qemu-block-extra holds (no command).
ensure_debian_packages openssl:openssl tgt:tgtd openssh-server:sshd openssh-client:ssh-agent qemu-block-extra:
# libnbd0 has no command: fuse-export loads libnbd.so.0 for NBD images (test/nbd.test.ts).
# (grep reads all of ldconfig's list: with -q it would stop early, and
# ldconfig's SIGPIPE would fail the pipe under pipefail.)
ldconfig -p | grep 'libnbd\.so\.0 ' >/dev/null || ensure_debian_packages libnbd0:/nonexistent/libnbd0
ensure_rust
ensure_build test-faults
# The specs that act as another user (attributes, setup, user) run the CLI
# and test/helpers/fsop.py from this checkout as nobody, so every directory
# above it must let others through. A clone under a private directory
# (`mktemp -d` makes them 0700) gets o+x on those for the run, put back on
# exit, as the specs put back /dev/fuse's mode.
opened=()
restore_private_dirs() { [ ${#opened[@]} -eq 0 ] || chmod o-x "${opened[@]}"; }
trap restore_private_dirs EXIT
dir="$ROOT"
while [ "$dir" != / ]; do
  # The last of the ten mode letters: x or t when others may pass.
  if [[ "$(stat -c %A "$dir")" != *[xt] ]]; then
    chmod o+x "$dir"
    opened+=("$dir")
  fi
  dir="$(dirname "$dir")"
done
[ ${#opened[@]} -eq 0 ] || echo "NOTE: let other users through ${opened[*]} for the run (the specs run as nobody); put back on exit" >&2
check_generated_loader
cargo test --workspace --quiet
# The fuzz targets (docs/DESIGN.md "Fuzzing") build niced while the ava
# suite runs: their build is about two minutes of CPU, which the suite,
# waiting on mounts, servers and timeouts, mostly leaves idle. Their
# regression runs at the end.
fuzz_log="$(mktemp)"
# Its own process group, so that an early exit stops the whole build.
setsid nice -n 19 scripts/fuzz.sh >"$fuzz_log" 2>&1 &
fuzz_build=$!
trap 'kill -- -"$fuzz_build" 2>/dev/null || true; rm -f "$fuzz_log"; restore_private_dirs' EXIT
# A type error in a spec (or a core interface the fake core no longer fits) fails here.
npm run --silent typecheck:test
npx ava "$@"

# The passthrough pass (test/helpers/passthrough-pass.ts): the helpers'
# exports get --passthrough auto, and fail where the kernel does not carry
# the data of an export the contract lets it carry. The specs whose exports
# are raw image files, which the kernel then serves. Not nbd and qcow2
# (never passed through: the normal path again, a minute for nothing),
# passthrough (names its switch in every test), mountpoint-guard (starts
# the CLI without the helpers' options), soak (its own script) and unit
# (the option parser, a fake core). Given specs run in both passes.
# A kernel without FUSE passthrough (before Linux 6.9, or built without
# CONFIG_FUSE_PASSTHROUGH) cannot run the pass: said, not hidden.
if grep -qw fuse_passthrough_open /proc/kallsyms 2>/dev/null; then
  PASSTHROUGH_SPECS=(test/{api,attributes,cli,ext4,fallocate-lseek,faults,io,lifecycle,random-ops,setup,transport,user}.test.ts)
  [ $# -gt 0 ] || set -- "${PASSTHROUGH_SPECS[@]}"
  FUSE_EXPORT_TEST_PASSTHROUGH=auto npx ava "$@"
else
  echo "NOTE: the passthrough pass did not run: kernel $(uname -r) has no FUSE passthrough (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH)" >&2
fi

# Every fuzz target replays its committed corpus, then fuzzes a fixed
# number of runs with a fixed seed (about 20 s in all).
if ! wait "$fuzz_build"; then
  cat "$fuzz_log" >&2
  echo "Building the fuzz targets failed" >&2
  exit 1
fi
scripts/fuzz.sh --regress
