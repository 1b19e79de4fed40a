#!/usr/bin/env bash
# `npm run crash-loop [-- --rounds N ...]`: kill -9 of writable exports at
# random moments of a random fsync'd write load, checked round by round
# (scripts/crash-loop.ts says the options).
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fuse3:fusermount3 qemu-utils:qemu-img util-linux:setpriv python3:/usr/bin/python3
# The addon the test suite builds (with its fault knobs, unused here), so
# that a crash loop after `npm test` rebuilds nothing.
ensure_build test-faults
exec node --import=tsx scripts/crash-loop.ts "$@"
