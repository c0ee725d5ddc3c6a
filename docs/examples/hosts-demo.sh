#!/bin/bash
# netmux, several hosts (docs/hosts.md), live: `netmux lab up --hosts 2` puts two netmux
# hosts behind one lab router — host a (the primary: Knot with every host's zone and the
# catalog), host b (a member: its records to a on a 2 s lease) — plus an off-site Knot
# secondary in a "vps" namespace and an "internet" namespace with a resolver. A workload
# on b is reached by name from a workload on a and from the internet; b is switched off
# (its cable pulled): its names are gone within the lease; switched on: back. `netmux host
# list` runs in host a's mux, where its Knot is (at ::1 and on gw0).
# Run as root from the source tree (`make demo-hosts`). Everything it makes is the demo's
# own (docs/examples/hosts-demo.toml) and removed at the end, also when a step fails.
set -euo pipefail
exec 2>&1

here=$(cd "$(dirname "$0")/../.." && pwd)
NETMUX=${NETMUX:-$here/.venv/bin/netmux}
export NETMUX_CONFIG=${NETMUX_CONFIG:-$here/docs/examples/hosts-demo.toml}
ROOT=${HOSTS_DEMO_ROOT:-/run/netmux-hosts-demo}  # the config's paths (state, run, workloads)
ROUTER=${HOSTS_DEMO_ROUTER:-hdemo-router}         # the config's lab.router_netns
WEB=${HOSTS_DEMO_WEB:-hdemo-web}                  # on host b
APP=${HOSTS_DEMO_APP:-hdemo-app}                  # on host a
HOSTS=$ROOT/run/lab-hosts                         # every host's generated netmux.toml
INET=$ROUTER-inet
VPS=$ROUTER-vps
WAIT=${HOSTS_DEMO_WAIT:-20}  # seconds for a name to come or go (the lease is 2 s)
web_pid=""
app_pid=""

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  rc=$?
  set +e
  trap - EXIT INT TERM
  step "clean up"
  for p in $web_pid $app_pid; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$NETMUX" lab down --force || true  # every host, the vps, the internet, the router
  rm -rf "$ROOT"
  left=$(ip netns list | grep -E "^($ROUTER|$WEB|$APP|hdemo-)" || true)
  if [ -n "$left" ]; then echo "left behind: $left"; rc=1; else echo "nothing left behind"; fi
  [ "$rc" = 0 ] && echo "hosts demo finished" || echo "hosts demo FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo-hosts: run as root (it creates network namespaces)"; exit 1; }
"$NETMUX" -q lab down --force >/dev/null 2>&1 || true  # leftovers of an interrupted run

a() { "$NETMUX" --config "$HOSTS/h1/netmux.toml" "$@"; }
b() { "$NETMUX" --config "$HOSTS/h2/netmux.toml" "$@"; }
field() {  # field FILE KEY: a generated config's value (zone, primary address)
  python3 -c 'import sys,tomllib; t=tomllib.load(open(sys.argv[1],"rb")); print(eval(sys.argv[2], {}, t))' "$@"
}
ask() {  # ask NETNS SERVER NAME: the AAAA of NAME ("" when none)
  ip netns exec "$1" dig "@$2" +short +time=1 +tries=1 "$3" AAAA 2>/dev/null | grep -v '^;' || true
}
until_answer() {  # until_answer WANT NETNS SERVER NAME: WANT "" waits for no answer
  local t0 got
  t0=$(date +%s%N)
  for _ in $(seq $((WAIT * 5))); do
    got=$(ask "$2" "$3" "$4")
    if { [ -n "$1" ] && [ "$got" = "$1" ]; } || { [ -z "$1" ] && [ -z "$got" ]; }; then
      printf '%s @%s from %s: %s (after %d ms)\n' "$4" "$3" "$2" "${got:-(no answer)}" \
        $((($(date +%s%N) - t0) / 1000000))
      return 0
    fi
    sleep 0.2
  done
  echo "$4 @$3 from $2: still '${got}' after ${WAIT}s"; return 1
}

step "1. the lab with two hosts: a (primary) and b (member), one router, a vps, the internet"
run "$NETMUX" lab up --hosts 2
primary=$(field "$HOSTS/h2/netmux.toml" 'hosts["primary"]')
mux_a=$(field "$HOSTS/h1/netmux.toml" 'mux["netns"]')
zone_b=$(field "$HOSTS/h2/netmux.toml" 'dns["hostname"]+"."+dns["domain"]')
echo "(host b sends its records to the primary's Knot at $primary; its zone is $zone_b)"
run ip netns list
mux_b=$(field "$HOSTS/h2/netmux.toml" 'mux["netns"]')
run ip -n "$mux_a" -br -6 addr show dev gw0 scope global
run ip -n "$mux_b" -br -6 addr show dev gw0 scope global
if [ -e "$HOSTS/h2/run/lab/dhcpcd.log" ]; then
  echo "(both /64s delegated by the router's one kea, each host asking with its own IAID:)"
  grep -h 'delegated prefix' "$ROOT/run/lab/dhcpcd.log" "$HOSTS/h2/run/lab/dhcpcd.log" || true
fi

step "2. a workload on b serves HTTP; a workload on a"
mkdir -p "$ROOT/www"
echo "hello from $WEB on host b" > "$ROOT/www/index.html"
printf '$ %s &\n' "netmux --config $HOSTS/h2/netmux.toml up $WEB --port tcp/80 -- busybox httpd -f -p [::]:80 -h $ROOT/www"
b up "$WEB" --port tcp/80 -- busybox httpd -f -p '[::]:80' -h "$ROOT/www" &
web_pid=$!
printf '$ %s &\n' "netmux --config $HOSTS/h1/netmux.toml up $APP -- sleep infinity"
a up "$APP" -- sleep infinity &
app_pid=$!
name=$WEB.$zone_b

for _ in $(seq 100); do
  b status "$WEB" --json 2>/dev/null | grep -q "\"$name\"" && break
  sleep 0.1
done
run b status "$WEB"
web=$(b status "$WEB" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addresses"]["global"][0].split("/")[0])')

step "3. $name from the workload on a (the primary's Knot) and from the internet"
until_answer "$web" "$APP" "$primary" "$name"
until_answer "$web" "$INET" 2001:db8:6::1 "$name"   # the vps secondary (from the catalog)
until_answer "$web" "$INET" 2001:db8:6::2 "$name"   # the internet's resolver
echo "nameserver $primary" > "$ROOT/resolv.conf"
printf '$ ip netns exec %s curl http://%s/  (resolv.conf: the primary)\n' "$APP" "$name"
ip netns exec "$APP" unshare -m sh -c "mount --bind $ROOT/resolv.conf /etc/resolv.conf && curl -sS -g --max-time 5 http://$name/"
run ip netns exec "$mux_a" "$NETMUX" --config "$HOSTS/h1/netmux.toml" host list

step "4. host b switched off (its cable pulled at the router): its names go within the lease"
run "$NETMUX" lab off 2
until_answer "" "$APP" "$primary" "$name"
until_answer "" "$INET" 2001:db8:6::1 "$name"
run ip netns exec "$mux_a" "$NETMUX" --config "$HOSTS/h1/netmux.toml" host list

step "5. host b switched on: its next refresh brings its names back"
run "$NETMUX" lab on 2
until_answer "$web" "$APP" "$primary" "$name"
until_answer "$web" "$INET" 2001:db8:6::1 "$name"
