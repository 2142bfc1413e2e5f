#!/usr/bin/env bash
# hakube step runner: runs one boot.sh step detached from the SSH session that asked for it,
# so that the step survives a dropped connection and a killed hakube, and hakube can attach
# to it again. Shipped by hakube to /etc/hakube/step.sh (mode 0755) and run as root through
# `sudo -n`. A plain bash script, not a template: the constants below are the only values
# hakube writes in.
#
# Usage (UNIT: hakube-[a-z0-9][a-z0-9.-]*, at most 200 bytes, without .service;
#        KEY: [a-z0-9][a-z0-9.-]*, at most 200 bytes):
#
#   step.sh start UNIT KEY ARG...  Runs `BOOT_SCRIPT ARG...` as the transient systemd unit
#                                  UNIT.service. Prints `started UNIT`, or `attached UNIT2`
#                                  when a unit of the same KEY (UNIT2, maybe UNIT itself) is
#                                  still running; then nothing new starts. Exit 0. Exit 1
#                                  when UNIT itself is running another KEY's step, or the
#                                  unit cannot be started.
#   step.sh run UNIT KEY ARG...    start, then (when it started UNIT) follow from 0, status
#                                  and clear, in one call; the results on standard error as
#                                  `step.sh: unit started|attached UNIT` and `step.sh: unit
#                                  exited CODE` (see cmd_run).
#   step.sh follow UNIT OFFSET     Writes the log's bytes from byte OFFSET (decimal) on to
#                                  standard output, following while the step runs, and exits
#                                  0 once the step has ended and every byte was written.
#                                  Exit 3 when there is no log of UNIT; exit 1 when OFFSET is
#                                  beyond the log's end.
#   step.sh status UNIT            Prints one line: `running`, `exited CODE` (the exit status
#                                  of boot.sh; 128+N when signal N killed it) or `unknown`
#                                  (no such unit and no recorded status: never started,
#                                  cleared, or the node rebooted; the log may still exist).
#   step.sh clear UNIT             Forgets a finished unit (its state, not its log). Exit 1,
#                                  changing nothing, while it runs; exit 0 otherwise (also
#                                  when there is nothing to forget).
#
# Exit 2 for a usage error or an invalid UNIT, KEY or OFFSET; nothing is started then.
# Standard output carries only the results above (and, for follow, the log's bytes); every
# message goes to standard error and starts with `step.sh: `.
#
# Where things are:
#   STEP_LOG_DIR/UNIT.log   everything the step wrote to stdout and stderr (appended by the
#                           service manager). Truncated when UNIT starts afresh, kept by
#                           clear, survives reboots.
#   STEP_RUN_DIR/start.lock flock held while start decides, so two starts of one KEY on a
#                           node cannot both start.
# With systemd, the unit is the state: `systemd-run --unit=UNIT --property=RemainAfterExit=yes`
# without --collect, so a finished unit stays loaded with its main process's exit status
# (active/exited after success, failed otherwise) until clear or the next start of UNIT.
# The KEY is recorded on the unit as its Description, `hakube step KEY`, and found again with
# `systemctl list-units` and `systemctl show -p Description`. The unit runs in system.slice,
# outside the SSH login's session, so ending or killing the session does not reach it.
#
# Without systemd (sd_booted(3): /run/systemd/system exists iff the machine booted with
# systemd), the step runs under `setsid` with its output appended to the same log, and
#   STEP_RUN_DIR/UNIT.pid     `PID STARTTIME KEY` of the wrapper process that runs boot.sh
#                             (STARTTIME: field 22 of /proc/PID/stat, so that a reused PID is
#                             not taken for the step)
#   STEP_RUN_DIR/UNIT.status  boot.sh's exit status, written by the wrapper after boot.sh
#                             ended (a temporary file renamed into place); 128+N for signal N
# stand in for the unit.
set -euo pipefail
shopt -s inherit_errexit

# --- Constants (hakube renders these in; keep them here, one per line) -------------------
readonly BOOT_SCRIPT=/etc/hakube/boot.sh
readonly STEP_LOG_DIR=/var/log/hakube/steps      # survives reboots
readonly STEP_RUN_DIR=/run/hakube/steps          # locks, pid files (fallback)
readonly UNIT_PREFIX=hakube-
readonly SYSTEMD_DIR=/run/systemd/system         # exists iff booted with systemd (sd_booted(3))
# --- End of constants ---------------------------------------------------------------------

# How long start waits for the start lock, and for a cleared unit to be unloaded (seconds).
readonly LOCK_TIMEOUT=120
readonly UNLOAD_TIMEOUT=10

umask 077
export LC_ALL=C

die() {
  local code=$1
  shift
  printf 'step.sh: %s\n' "$*" >&2
  exit "$code"
}

usage() {
  die 2 "$1 (usage: step.sh start UNIT KEY ARG... | run UNIT KEY ARG... | follow UNIT OFFSET | status UNIT | clear UNIT)"
}

# check_name WHAT VALUE: VALUE is [a-z0-9][a-z0-9.-]* of at most 200 bytes, else exit 2.
check_name() {
  local what=$1 value=$2
  if ! [[ $value =~ ^[a-z0-9][a-z0-9.-]*$ ]]; then
    die 2 "invalid $what '$value': expected [a-z0-9][a-z0-9.-]*"
  fi
  # Only ASCII is left, so characters are bytes.
  if ! [[ $value =~ ^.{1,200}$ ]]; then
    die 2 "invalid $what: longer than 200 bytes"
  fi
}

check_unit() {
  local unit=$1
  if [[ $unit != "$UNIT_PREFIX"* ]] || ! [[ ${unit#"$UNIT_PREFIX"} =~ ^[a-z0-9][a-z0-9.-]*$ ]]; then
    die 2 "invalid unit '$unit': expected ${UNIT_PREFIX}[a-z0-9][a-z0-9.-]*"
  fi
  if [[ $unit == *.service ]]; then
    die 2 "invalid unit '$unit': name it without .service"
  fi
  if ! [[ $unit =~ ^.{1,200}$ ]]; then
    die 2 "invalid unit: longer than 200 bytes"
  fi
}

have_systemd() {
  [[ -d $SYSTEMD_DIR ]]
}

log_of() {
  printf '%s/%s.log' "$STEP_LOG_DIR" "$1"
}

# --- systemd ------------------------------------------------------------------------------

# unit_show UNIT: reads the unit's state into U_LOAD, U_ACTIVE, U_SUB, U_PID, U_CODE and
# U_STATUS. `systemctl show` prints properties in its own order, one KEY=VALUE a line.
unit_show() {
  local out key value
  out=$(systemctl show --property=LoadState,ActiveState,SubState,MainPID,ExecMainCode,ExecMainStatus -- "$1.service") ||
    die 1 "systemctl show $1.service failed"
  U_LOAD='' U_ACTIVE='' U_SUB='' U_PID=0 U_CODE=0 U_STATUS=0
  while IFS='=' read -r key value; do
    case $key in
      LoadState) U_LOAD=$value ;;
      ActiveState) U_ACTIVE=$value ;;
      SubState) U_SUB=$value ;;
      MainPID) U_PID=$value ;;
      ExecMainCode) U_CODE=$value ;;
      ExecMainStatus) U_STATUS=$value ;;
    esac
  done <<<"$out"
}

# state_running ACTIVE SUB: whether a unit in that state still runs its step. RemainAfterExit
# makes a finished unit active/exited; a failed one is failed; one whose main process runs is
# active/running; starting and stopping count as running.
state_running() {
  case $1 in
    activating | deactivating | reloading | refreshing) return 0 ;;
    active) [[ $2 != exited ]] ;;
    *) return 1 ;;
  esac
}

unit_loaded() {
  [[ $U_LOAD != not-found && $U_LOAD != '' ]]
}

# unit_for_key KEY: prints the running unit (without .service) whose Description is
# `hakube step KEY`, if any.
unit_for_key() {
  local key=$1 listing first rest out line id='' desc='' active='' sub=''
  local -a units=()
  listing=$(systemctl list-units --all --plain --no-legend --no-pager --type=service -- "${UNIT_PREFIX}*.service") ||
    die 1 "systemctl list-units failed"
  while read -r first rest; do
    # Without --plain systemctl marks failed units with a bullet (`*` in the C locale); in
    # case a version does so with --plain too, it is skipped.
    if [[ $first == "●" || $first == "*" ]]; then
      read -r first rest <<<"$rest"
    fi
    if [[ $first == "$UNIT_PREFIX"*.service ]]; then
      units+=("$first")
    fi
  done <<<"$listing"
  [[ ${units[*]+set} == set ]] || return 0
  out=$(systemctl show --property=Id,Description,ActiveState,SubState -- "${units[@]}") ||
    die 1 "systemctl show failed"
  # One block of KEY=VALUE lines per unit, an empty line after each; an empty line is
  # appended so that the last block ends like the others.
  while IFS= read -r line; do
    case $line in
      Id=*) id=${line#*=} ;;
      Description=*) desc=${line#*=} ;;
      ActiveState=*) active=${line#*=} ;;
      SubState=*) sub=${line#*=} ;;
      '')
        if [[ $id != '' && $desc == "hakube step $key" ]] && state_running "$active" "$sub"; then
          printf '%s\n' "${id%.service}"
          return 0
        fi
        id='' desc='' active='' sub=''
        ;;
    esac
  done <<<"$out"$'\n'
}

# forget_unit UNIT: stops a finished unit and resets its failed state, so the service
# manager unloads it (a transient unit is collected once inactive and not failed); waits
# until it is gone.
forget_unit() {
  local unit=$1 deadline
  systemctl stop -- "$unit.service" >&2 || die 1 "systemctl stop $unit.service failed"
  systemctl reset-failed -- "$unit.service" >/dev/null 2>&1 || true
  deadline=$((SECONDS + UNLOAD_TIMEOUT))
  while true; do
    unit_show "$unit"
    if ! unit_loaded; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      die 1 "$unit.service is still loaded ($U_ACTIVE/$U_SUB) after stop and reset-failed"
    fi
    sleep 0.1
  done
}

systemd_start() {
  local unit=$1 key=$2 log running arg
  shift 2
  local -a argv=()
  running=$(unit_for_key "$key")
  if [[ $running != '' ]]; then
    printf 'attached %s\n' "$running"
    return 0
  fi
  unit_show "$unit"
  if unit_loaded; then
    if state_running "$U_ACTIVE" "$U_SUB"; then
      die 1 "$unit.service is running, but not for step key $key"
    fi
    forget_unit "$unit"
  fi
  log=$(log_of "$unit")
  : >"$log"
  # The service manager expands $VAR and ${VAR} in a command's arguments (systemd.service(5),
  # "Command lines"; systemd-run(1) --expand-environment, on by default for services) and
  # turns $$ into $: doubling each $ passes the arguments through unchanged.
  for arg in "$@"; do
    argv+=("${arg//\$/\$\$}")
  done
  systemd-run --quiet --unit="$unit" --description="hakube step $key" \
    --property=RemainAfterExit=yes \
    --property=StandardOutput="append:$log" --property=StandardError="append:$log" \
    -- "$BOOT_SCRIPT" "${argv[@]}" >&2 || die 1 "systemd-run of $unit.service failed"
  printf 'started %s\n' "$unit"
}

# exit_code CODE STATUS: boot.sh's exit status as a shell reports it, from the service's
# ExecMainCode and ExecMainStatus. The service manager records the si_code and si_status of
# waitid(2) for the main process: src/core/manager.c invoke_sigchld_event() passes
# si->si_code and si->si_status to service_sigchld_event() (src/core/service.c), which keeps
# them with exec_status_exit() as main_exec_status, shown as ExecMainCode/ExecMainStatus
# (org.freedesktop.systemd1(5): "information about the main process of the service").
# si_code is CLD_EXITED (1, si_status the exit status), CLD_KILLED (2) or CLD_DUMPED (3,
# si_status the signal number); 0 when no main process has ended.
exit_code() {
  [[ $2 =~ ^[0-9]+$ ]] || return 1
  case $1 in
    1) printf '%s' "$2" ;;
    2 | 3) printf '%s' "$((128 + $2))" ;;
    *) return 1 ;;
  esac
}

systemd_status() {
  local code
  unit_show "$1"
  if ! unit_loaded; then
    echo unknown
  elif state_running "$U_ACTIVE" "$U_SUB"; then
    echo running
  elif code=$(exit_code "$U_CODE" "$U_STATUS"); then
    printf 'exited %s\n' "$code"
  else
    echo unknown
  fi
}

systemd_clear() {
  unit_show "$1"
  if ! unit_loaded; then
    return 0
  fi
  if state_running "$U_ACTIVE" "$U_SUB"; then
    die 1 "$1.service is running; clear it once it has finished"
  fi
  forget_unit "$1"
}

# --- Without systemd ----------------------------------------------------------------------

# What runs boot.sh without systemd: bash -c WRAPPER hakube-step RUN_DIR UNIT BOOT_SCRIPT
# ARG...; records boot.sh's exit status (bash's $?: 128+N after signal N) once it ended.
# shellcheck disable=SC2016 # expanded by the wrapper's bash, not here
readonly FALLBACK_WRAPPER='"${@:3}" </dev/null
code=$?
printf "%s\n" "$code" >"$1/$2.status.tmp" && mv -f -- "$1/$2.status.tmp" "$1/$2.status"'

# start_time PID: field 22 of /proc/PID/stat (after the parenthesised command name, which
# may hold spaces); fails when the process is gone or a zombie.
start_time() {
  local stat rest
  local -a fields
  { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  rest=${stat##*) }
  read -r -a fields <<<"$rest"
  [[ ${fields[0]} != Z && ${fields[0]} != X ]] || return 1
  printf '%s' "${fields[19]}"
}

# fb_read UNIT: the pid file's fields into F_PID, F_START and F_KEY; fails without one.
fb_read() {
  local file="$STEP_RUN_DIR/$1.pid"
  F_PID='' F_START='' F_KEY=''
  [[ -f $file ]] || return 1
  read -r F_PID F_START F_KEY <"$file" || true
  [[ $F_PID =~ ^[0-9]+$ ]]
}

# fb_running UNIT: whether UNIT's wrapper still runs boot.sh.
fb_running() {
  local now
  fb_read "$1" || return 1
  [[ ! -e "$STEP_RUN_DIR/$1.status" ]] || return 1
  now=$(start_time "$F_PID") || return 1
  [[ $now == "$F_START" ]]
}

fallback_start() {
  local unit=$1 key=$2 log file name pid started
  shift 2
  for file in "$STEP_RUN_DIR"/*.pid; do
    [[ -e $file ]] || continue
    name=${file##*/}
    name=${name%.pid}
    if fb_running "$name" && [[ $F_KEY == "$key" ]]; then
      printf 'attached %s\n' "$name"
      return 0
    fi
  done
  if fb_running "$unit"; then
    die 1 "$unit is running, but not for step key $key"
  fi
  rm -f -- "$STEP_RUN_DIR/$unit.pid" "$STEP_RUN_DIR/$unit.status" "$STEP_RUN_DIR/$unit.status.tmp"
  log=$(log_of "$unit")
  : >"$log"
  # A new session without a terminal (no SIGHUP when the SSH session ends), no descriptor of
  # this script's (9 is the start lock, which must not outlive start).
  setsid bash -c "$FALLBACK_WRAPPER" hakube-step "$STEP_RUN_DIR" "$unit" "$BOOT_SCRIPT" "$@" \
    </dev/null >>"$log" 2>&1 9>&- &
  pid=$!
  # The wrapper is this script's child until it exits, so /proc/PID stays (a zombie at worst:
  # start_time fails then, and the status file says the step ended).
  started=$(start_time "$pid") || started=0
  printf '%s %s %s\n' "$pid" "$started" "$key" >"$STEP_RUN_DIR/$unit.pid.tmp"
  mv -f -- "$STEP_RUN_DIR/$unit.pid.tmp" "$STEP_RUN_DIR/$unit.pid"
  printf 'started %s\n' "$unit"
}

fallback_status() {
  local code
  if fb_running "$1"; then
    echo running
  elif [[ -f "$STEP_RUN_DIR/$1.status" ]] && code=$(<"$STEP_RUN_DIR/$1.status") && [[ $code =~ ^[0-9]+$ ]]; then
    printf 'exited %s\n' "$code"
  else
    echo unknown
  fi
}

fallback_clear() {
  if fb_running "$1"; then
    die 1 "$1 is running; clear it once it has finished"
  fi
  rm -f -- "$STEP_RUN_DIR/$1.pid" "$STEP_RUN_DIR/$1.status" "$STEP_RUN_DIR/$1.status.tmp"
}

# --- Subcommands --------------------------------------------------------------------------

cmd_start() {
  (($# >= 3)) || usage "start needs UNIT, KEY and at least one ARG (the boot.sh step)"
  local unit=$1 key=$2
  check_unit "$unit"
  check_name "key" "$key"
  shift 2
  [[ -x $BOOT_SCRIPT ]] || die 1 "$BOOT_SCRIPT is missing or not executable"
  install -d -m 0700 -- "$STEP_LOG_DIR" "$STEP_RUN_DIR"
  exec 9>"$STEP_RUN_DIR/start.lock"
  flock -w "$LOCK_TIMEOUT" 9 || die 1 "another start held $STEP_RUN_DIR/start.lock for ${LOCK_TIMEOUT} s"
  if have_systemd; then
    systemd_start "$unit" "$key" "$@"
  else
    fallback_start "$unit" "$key" "$@"
  fi
}

# follow: tail prints the log from OFFSET and, with --pid, follows it until that process is
# gone, then reads once more: "Once the writer is dead, read the files once more to avoid a
# race condition" (GNU coreutils src/tail.c, tail_forever(), the polling loop); the inotify
# loop, tail_forever_inotify(), likewise checks `kill (pid, 0)` first and, when the writer is
# dead, still takes the events already queued (select() with a zero timeout) before it exits,
# and every write before the writer's death queued one. doc/coreutils.texi: "--pid=PID ...
# shortly after that process terminates, tail will also terminate"; -s: "With inotify and
# --pid=P, check process P at least once every N seconds" (tests/tail/pid.sh). Every byte the
# step wrote is in the file before its process is gone (regular file writes), so nothing is
# lost, and tail -c +N counts bytes, so nothing is doubled. When the step is not running, a
# plain `tail -c +N` prints what is left.
cmd_follow() {
  (($# == 2)) || usage "follow needs UNIT and OFFSET"
  local unit=$1 offset=$2 log size pid=0 watcher
  check_unit "$unit"
  if ! [[ $offset =~ ^(0|[1-9][0-9]{0,17})$ ]]; then
    die 2 "invalid offset '$offset': expected a decimal number of bytes"
  fi
  log=$(log_of "$unit")
  [[ -f $log ]] || die 3 "no log of $unit ($log)"
  size=$(stat -c %s -- "$log")
  ((offset <= size)) || die 1 "offset $offset is beyond the end of $log ($size bytes)"
  if have_systemd; then
    unit_show "$unit"
    if unit_loaded && state_running "$U_ACTIVE" "$U_SUB" && [[ $U_PID != 0 ]]; then
      pid=$U_PID
    fi
    if ((pid != 0)); then
      exec tail -c "+$((offset + 1))" -f -s 0.2 --pid="$pid" -- "$log"
    fi
    exec tail -c "+$((offset + 1))" -- "$log"
  fi
  if ! fb_running "$unit"; then
    exec tail -c "+$((offset + 1))" -- "$log"
  fi
  # Without systemd the writer is the wrapper, whose PID tail cannot tell from a reused one
  # (and an orphan may stay a zombie until something reaps it): a watcher child of this
  # script stands for it, gone once fb_running says the step ended.
  (
    exec 1>/dev/null
    while fb_running "$unit"; do
      sleep 0.2
    done
  ) &
  watcher=$!
  local code=0
  tail -c "+$((offset + 1))" -f -s 0.2 --pid="$watcher" -- "$log" || code=$?
  # tail may have ended first (its reader went away).
  kill "$watcher" 2>/dev/null || true
  return "$code"
}

cmd_status() {
  (($# == 1)) || usage "status needs UNIT"
  check_unit "$1"
  if have_systemd; then
    systemd_status "$1"
  else
    fallback_status "$1"
  fi
}

cmd_clear() {
  (($# == 1)) || usage "clear needs UNIT"
  check_unit "$1"
  if have_systemd; then
    systemd_clear "$1"
  else
    fallback_clear "$1"
  fi
}

# run: start, then, when this call started the unit, follow it from byte 0, report its
# status and clear it: one command per step when nothing goes wrong. Standard output is the
# log, as follow's. Standard error carries, besides messages, `step.sh: unit started UNIT` or
# `step.sh: unit attached UNIT2` first and, after a follow, `step.sh: unit exited CODE` (or
# `running`, `unknown`) last. An attached unit is not followed here: the caller follows it
# from the offset it has. A unit cleared here keeps its log, whose marker lines say how the
# step ended, for a caller that lost the connection before the last line.
cmd_run() {
  local out unit status
  out=$(cmd_start "$@") || exit $?
  printf 'step.sh: unit %s\n' "$out" >&2
  case $out in
    "attached "*) return 0 ;;
  esac
  unit=${out#started }
  (cmd_follow "$unit" 0) || exit $?
  status=$(cmd_status "$unit")
  printf 'step.sh: unit %s\n' "$status" >&2
  case $status in
    exited*) cmd_clear "$unit" ;;
  esac
}

main() {
  (($# >= 1)) || usage "no subcommand"
  local command=$1
  shift
  case $command in
    start) cmd_start "$@" ;;
    run) cmd_run "$@" ;;
    follow) cmd_follow "$@" ;;
    status) cmd_status "$@" ;;
    clear) cmd_clear "$@" ;;
    *) usage "unknown subcommand '$command'" ;;
  esac
}

main "$@"
