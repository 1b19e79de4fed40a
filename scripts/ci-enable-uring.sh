#!/usr/bin/env bash
# CI helper: turns on FUSE-over-io_uring when the runner's kernel has it and
# says clearly whether it does. It never fails the job for a missing feature:
# the end-to-end suite skips its io_uring tests by itself. Run it as root.
#
# Writes `available=true|false` to $GITHUB_OUTPUT and a line to
# $GITHUB_STEP_SUMMARY when those are set (GitHub Actions), and prints
# ::notice:: / ::warning:: annotations.
set -uo pipefail

PARAM=/sys/module/fuse/parameters/enable_uring
kernel=$(uname -r)

notice() { echo "::notice title=FUSE-over-io_uring::$*"; }
warning() { echo "::warning title=FUSE-over-io_uring::$*"; }

finish() {
  local available=$1 message=$2
  notice "$message"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "available=$available" >>"$GITHUB_OUTPUT"; fi
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then echo "**FUSE-over-io_uring:** $message" >>"$GITHUB_STEP_SUMMARY"; fi
  exit 0
}

echo "Kernel: $kernel"
major=${kernel%%.*}
rest=${kernel#*.}
minor=${rest%%[!0-9]*}
if [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]]; then
  if ((major > 6 || (major == 6 && minor >= 14))); then
    echo "Kernel $major.$minor is >= 6.14: FUSE-over-io_uring is possible when built with CONFIG_FUSE_IO_URING"
  else
    echo "Kernel $major.$minor is older than 6.14: FUSE-over-io_uring does not exist there"
  fi
fi

# io_uring itself: the legacy /dev/fuse transport uses it too, so a kernel
# that disables it breaks the whole suite, not only the io_uring tests.
if [ -r /proc/sys/kernel/io_uring_disabled ]; then
  disabled=$(cat /proc/sys/kernel/io_uring_disabled)
  echo "kernel.io_uring_disabled = $disabled"
  if [ "$disabled" != 0 ]; then
    warning "kernel.io_uring_disabled is $disabled on this runner: io_uring may be refused"
  fi
fi

# /dev/fuse and the fuse module (GitHub's Ubuntu runners load it; a
# container usually has no modprobe, hence the best effort).
if [ -c /dev/fuse ]; then
  ls -l /dev/fuse
else
  warning "/dev/fuse is missing in this environment"
fi
if [ ! -d /sys/module/fuse ] && command -v modprobe >/dev/null 2>&1; then
  modprobe fuse 2>/dev/null || echo "modprobe fuse failed (ignored)"
fi
if [ ! -d /sys/module/fuse ]; then
  finish false "not available: the fuse module is not visible under /sys/module on kernel $kernel; the suite skips its io_uring tests"
fi

if [ ! -e "$PARAM" ]; then
  finish false "not available on this runner's kernel $kernel (no $PARAM: needs Linux >= 6.14 built with CONFIG_FUSE_IO_URING); the suite skips its io_uring tests"
fi

echo "$PARAM is currently: $(cat "$PARAM" 2>/dev/null || echo unreadable)"

enable() { echo Y >"$PARAM"; }

if ! enable; then
  # /sys can be mounted read-only in a container even when it is privileged.
  sys_options=$(awk '$2 == "/sys" { o = $4 } END { print o }' /proc/mounts 2>/dev/null)
  echo "/sys mount options: ${sys_options:-unknown}"
  if [[ ",$sys_options," == *,ro,* ]]; then
    echo "/sys is mounted read-only here; trying to remount it read-write"
    mount -o remount,rw /sys 2>/dev/null || echo "mount -o remount,rw /sys failed (ignored)"
  fi
  enable || true
fi

value=$(cat "$PARAM" 2>/dev/null || true)
if [ "$value" = Y ]; then
  finish true "available on kernel $kernel and enabled ($PARAM = Y); the suite runs its io_uring tests"
fi
finish false "present on kernel $kernel but could not be enabled (writing $PARAM failed; it reads '${value:-?}'); the suite skips its io_uring tests"
