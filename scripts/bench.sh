#!/usr/bin/env bash
# `npm run bench [-- --quick | --help]`: installs what the sections measure
# with when missing (fio; qemu-storage-daemon, qemu-img, qemu-nbd; nbdkit, nbdfuse and
# nbdcopy; gcc and liburing for the C reference server), builds when a
# source changed, then runs the fio matrix of bench/run.mjs (as root: it
# mounts FUSE file systems and toggles
# /sys/module/fuse/parameters/enable_uring for the run).
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fio:fio qemu-system-common:qemu-storage-daemon qemu-utils:qemu-img qemu-utils:qemu-nbd nbdkit:nbdkit libnbd-bin:nbdfuse gcc:gcc
# Headers only, no command to look for.
[ -f /usr/include/liburing.h ] || ensure_debian_packages liburing-dev:/nonexistent/liburing-dev
ensure_build
exec node bench/run.mjs "$@"
