#!/usr/bin/env bash
# `npm run bench [-- --quick | --help]`: installs fio and qemu-storage-daemon
# when missing, builds when a source changed, then runs the fio matrix of
# bench/run.mjs (as root: it mounts FUSE file systems and toggles
# /sys/module/fuse/parameters/enable_uring for the run).
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fio:fio qemu-system-common:qemu-storage-daemon
ensure_build
exec node bench/run.mjs "$@"
