#!/usr/bin/env bash
# `npm run soak [-- --duration S]`: fio randrw with crc32c verify, 4 jobs,
# on each transport; reports requests served and bytes verified.
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fio:fio fuse3:fusermount3
ensure_build
exec node scripts/soak.mjs "$@"
