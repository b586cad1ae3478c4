# shellcheck shell=bash
# Shell functions the server scripts share (sourced, not run).

# A free TCP port on the loopback interface.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Stop the process whose id is in PIDFILE (TERM, then KILL after 5 s), and remove
# the file.
stop_pidfile() {
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Wait (bounded, 30 s) until COMMAND... succeeds while the process whose id is in
# PIDFILE lives; NAME and LOG are for the message when it does not.
wait_answering() {
  local name=$1 pidfile=$2 log=$3; shift 3
  for _ in $(seq 1 150); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$name exited; see $log" >&2; tail -n 20 "$log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "$name did not answer within 30 s; see $log" >&2; return 1
}
