#!/usr/bin/env bash
# The fuzz targets (fuzz/, see docs/DESIGN.md "Fuzzing"): libFuzzer through
# the libfuzzer-sys crate, built on stable Rust with the coverage flags
# cargo-fuzz would pass.
#
#   scripts/fuzz.sh                      build the targets
#   scripts/fuzz.sh --regress            replay the committed corpus, then fuzz
#                                        each target briefly (npm test runs it)
#   scripts/fuzz.sh --campaign DURATION  all targets together for DURATION
#                                        (30m, 2h...), niced; logs, then per
#                                        target the executions and coverage,
#                                        and new corpus entries merged in
#   scripts/fuzz.sh --seeds              make the seeds again (qemu-img images
#                                        of every variant: scripts/fuzz-seeds.py)
#                                        and minimise them with the corpus
#
# Crashes are saved under fuzz/artifacts/<target>/.
source "$(dirname "$0")/lib.sh"
# libfuzzer-sys builds libFuzzer's C++ with the cc crate.
ensure_debian_packages g++:g++
ensure_rust

FUZZ="$ROOT/fuzz"
TARGETS=(fuse_request probe nbd_extents qcow2_image backing_chain)
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BIN="$FUZZ/target/$TRIPLE/release"
# What cargo-fuzz passes, on stable: sanitizer coverage via an LLVM pass
# (no -Z flags), --cfg fuzzing for the libfuzzer-sys crate. With --target
# named, build scripts and proc macros are built without them.
COVERAGE_FLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"

# libFuzzer options per target: every target gets a per-input time bound;
# the qcow2 ones the memory bound of issue 22 ("at most 256 MiB peak RSS on
# any hostile qcow2") and a length that holds the seed images.
options_of() {
  local options=(-timeout=10 -print_final_stats=1 "-artifact_prefix=$FUZZ/artifacts/$1/")
  case "$1" in
    qcow2_image | backing_chain) options+=(-rss_limit_mb=256 -max_len=1048576) ;;
    *) options+=(-rss_limit_mb=256) ;;
  esac
  printf '%s\n' "${options[@]}"
}

build() {
  echo "Building the fuzz targets" >&2
  (cd "$FUZZ" && RUSTFLAGS="$COVERAGE_FLAGS" nice -n 19 cargo build --quiet --release --locked \
    --target "$TRIPLE" --bins)
}

# run TARGET ARGS...: one libFuzzer run of TARGET with its options.
run() {
  local target="$1"
  shift
  mkdir -p "$FUZZ/artifacts/$target"
  local options
  mapfile -t options < <(options_of "$target")
  nice -n 19 "$BIN/$target" "${options[@]}" "$@"
}

# Replays each target's committed corpus, then fuzzes it from there in a
# scratch copy (the committed corpus stays as it is): a fixed seed and a
# fixed number of runs (about 5 s each), the same mutations every time, so
# that a failure here is a change's doing (campaigns find new defects).
regress() {
  local scratch
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  for target in "${TARGETS[@]}"; do
    mkdir -p "$scratch/$target"
    cp -r "$FUZZ/corpus/$target/." "$scratch/$target/" 2>/dev/null || true
    local runs
    runs="$(regress_runs "$target")"
    echo "fuzz $target: corpus replay and $runs runs" >&2
    if ! run "$target" -seed=1 -runs="$runs" -max_total_time=60 "$scratch/$target" >"$scratch/$target.log" 2>&1; then
      tail -n 40 "$scratch/$target.log" >&2
      echo "fuzz $target failed: the input is saved under fuzz/artifacts/$target/" >&2
      return 1
    fi
  done
}

# Runs of a regression: pure decoders run about 100 000 a second, images a few hundred.
regress_runs() {
  case "$1" in
    qcow2_image | backing_chain) echo 2000 ;;
    *) echo 300000 ;;
  esac
}

# campaign DURATION: every target at once for DURATION; then per target the
# executions and the coverage libFuzzer reports, and new corpus entries
# merged (minimised) into the committed corpus. Each target runs in
# libFuzzer's fork mode, so that a crash (counted in the log, saved under
# fuzz/artifacts/) does not end its campaign.
campaign() {
  local seconds logs
  seconds="$(duration_seconds "$1")"
  logs="$FUZZ/logs/$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$logs"
  local pids=()
  for target in "${TARGETS[@]}"; do
    mkdir -p "$logs/corpus/$target"
    run "$target" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -max_total_time="$seconds" \
      "$logs/corpus/$target" "$FUZZ/corpus/$target" \
      >"$logs/$target.log" 2>&1 &
    pids+=($!)
  done
  # Stopped with the script: no fuzzer (a child of each backgrounded run) outlives it.
  trap 'for pid in "${pids[@]}"; do pkill -INT -P "$pid"; done 2>/dev/null || true' EXIT
  echo "Campaign of ${seconds} s on ${#TARGETS[@]} targets, logs in $logs" >&2
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  trap - EXIT
  printf '%-14s %14s %10s %10s %s\n' target executions cov ft oom/timeout/crash
  for target in "${TARGETS[@]}"; do
    local log="$logs/$target.log" last
    last="$(grep -E '^#[0-9]+' "$log" | tail -n1)"
    printf '%-14s %14s %10s %10s %s\n' "$target" \
      "$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")" \
      "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")" \
      "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")" \
      "$(sed -n 's|.*oom/timeout/crash: \([0-9/]*\).*|\1|p' <<<"$last")"
    merge "$target" "$logs/corpus/$target"
  done
  return "$failed"
}

# merge TARGET FROM: the inputs of FROM that add coverage, into the corpus.
merge() {
  mkdir -p "$FUZZ/corpus/$1"
  run "$1" -merge=1 "$FUZZ/corpus/$1" "$2" >/dev/null 2>&1 || echo "merge into the $1 corpus failed" >&2
}

# The seeds made again, merged with the committed corpus into an empty
# folder (libFuzzer keeps the inputs that add coverage), which replaces it.
seeds() {
  ensure_debian_packages qemu-utils:qemu-img python3:python3
  local scratch
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  python3 "$ROOT/scripts/fuzz-seeds.py" "$scratch/seeds"
  for target in "${TARGETS[@]}"; do
    mkdir -p "$scratch/minimised/$target" "$FUZZ/corpus/$target"
    run "$target" -merge=1 "$scratch/minimised/$target" "$scratch/seeds/$target" "$FUZZ/corpus/$target" \
      >"$scratch/$target.log" 2>&1 || { tail -n 20 "$scratch/$target.log" >&2; return 1; }
    rm -rf "$FUZZ/corpus/$target"
    mv "$scratch/minimised/$target" "$FUZZ/corpus/$target"
    echo "corpus $target: $(ls "$FUZZ/corpus/$target" | wc -l) inputs, $(du -sh "$FUZZ/corpus/$target" | cut -f1)" >&2
  done
}

duration_seconds() {
  case "$1" in
    *h) echo $((${1%h} * 3600)) ;;
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

build
case "${1:-}" in
  "") ;;
  --regress) regress ;;
  --campaign) campaign "${2:?--campaign needs a duration, such as 2h}" ;;
  --seeds) seeds ;;
  *) echo "usage: scripts/fuzz.sh [--regress | --campaign DURATION | --seeds]" >&2; exit 2 ;;
esac
