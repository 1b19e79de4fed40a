#!/usr/bin/env bash
# `npm start -- [options] [<image> <mountpoint>]`: builds when needed and
# exports. Without an image it makes a small demo image and a mountpoint in
# a temporary directory, exports it writable and says where.
source "$(dirname "$0")/lib.sh"
ensure_debian_packages fuse3:fusermount3
ensure_build

positional=0
for arg in "$@"; do
  case "$arg" in -*) ;; *) positional=$((positional + 1)) ;; esac
done
if [ "$positional" -eq 0 ]; then
  demo="$(mktemp -d /tmp/fuse-export-demo.XXXXXX)"
  truncate -s 256M "$demo/disk.img"
  touch "$demo/disk"
  echo "Demo: exporting a 256 MiB image $demo/disk.img on $demo/disk (writable)." >&2
  echo "Try: fdisk -l $demo/disk, or mkfs.ext4 $demo/disk. Stop with Ctrl-C." >&2
  exec node dist/cli/main.js --writable "$@" "$demo/disk.img" "$demo/disk"
fi
exec node dist/cli/main.js "$@"
