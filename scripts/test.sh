#!/usr/bin/env bash
# `npm test`: installs the Debian test tools it uses, builds when needed,
# then runs the Rust unit tests, type-checks the ava specs (TypeScript, run
# through tsx) and runs the end-to-end suite (which mounts for real: run it
# as root on Linux with /dev/fuse).
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fuse3:fusermount3 fio:fio qemu-utils:qemu-io e2fsprogs:mkfs.ext4 mount:losetup util-linux:setpriv python3:/usr/bin/python3 fdisk:sfdisk nbdkit:nbdkit qemu-utils:qemu-nbd
# libnbd0 has no command: fuse-export loads libnbd.so.0 for NBD images (test/nbd.test.ts).
ldconfig -p | grep -q 'libnbd\.so\.0 ' || ensure_debian_packages libnbd0:/nonexistent/libnbd0
ensure_rust
ensure_build test-faults
check_generated_loader
cargo test --workspace --quiet
# A type error in a spec (or a core interface the fake core no longer fits) fails here.
npm run --silent typecheck:test
npx ava "$@"
