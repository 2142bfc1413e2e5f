#!/usr/bin/env bash
# A stand-in for hakube's boot.sh in the step runner's tests (step_runner.rs on a lab node,
# step_runner_fallback.rs on this machine), installed next to templates/step.sh:
#
#   boot.sh slow CODE [LINES] [DELAY]  prints LINES (20) lines `line NN of LINES`, after every
#                                      fifth one `stderr NN` on standard error, DELAY (0.2)
#                                      seconds apart, then exits CODE
#   boot.sh args ARG...                prints each ARG as `[ARG]`, exits 0
#
# Every run first appends `run STEP` to fake-runs and writes its PID to fake-pid, both in the
# script's own directory.
set -euo pipefail

dir=$(dirname -- "$0")
printf 'run %s\n' "$1" >>"$dir/fake-runs"
printf '%s\n' "$$" >"$dir/fake-pid"

case $1 in
  slow)
    code=$2
    lines=${3:-20}
    delay=${4:-0.2}
    for ((i = 1; i <= lines; i++)); do
      printf 'line %02d of %d\n' "$i" "$lines"
      if ((i % 5 == 0)); then
        printf 'stderr %02d\n' "$i" >&2
      fi
      if ((i < lines)); then
        sleep "$delay"
      fi
    done
    exit "$code"
    ;;
  args)
    shift
    printf '[%s]\n' "$@"
    ;;
  *)
    printf 'fake boot.sh: unknown step %s\n' "$1" >&2
    exit 64
    ;;
esac
