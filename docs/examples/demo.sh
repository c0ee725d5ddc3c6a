#!/bin/bash
# netmux, live: a lab router delegating a prefix, two workloads with real IPv6 addresses,
# pings, a restart, then DNS64 + NAT64 to an IPv4-only web server.
# Run as root from the source tree (`make demo`). Everything it makes is demo-specific
# (docs/examples/demo.toml) and removed at the end, also when a step fails.
set -euo pipefail
exec 2>&1  # netmux logs to stderr: keep it in order with the commands' output

here=$(cd "$(dirname "$0")/../.." && pwd)
NETMUX=${NETMUX:-$here/.venv/bin/netmux}
export NETMUX_CONFIG=${NETMUX_CONFIG:-$here/docs/examples/demo.toml}
WEB=demo-web
APP=demo-app
ROUTER=demo-router
PY=$(dirname "$NETMUX")/python  # the venv's python (netmux.lab.upstream for the resolver)
RUN=/run/netmux-demo/run/lab    # the lab's daemons: configs, pidfiles, logs
web_pid=""
netns_etc=""  # /etc/netns/$APP (and /etc/netns), made by this demo: ip netns exec binds
              # /etc/netns/NAME/resolv.conf over /etc/resolv.conf

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  rc=$?
  set +e
  trap - EXIT INT TERM
  step "clean up"
  if [ -n "$web_pid" ]; then kill "$web_pid" 2>/dev/null; wait "$web_pid" 2>/dev/null; fi
  for w in $WEB $APP; do "$NETMUX" -q down "$w" || true; done
  "$NETMUX" lab down || true  # also stops the resolver and NAT64
  for d in $netns_etc; do rm -f "$d/resolv.conf"; rmdir "$d" 2>/dev/null; done
  rm -rf /run/netmux-demo
  left=$(ip netns list | grep -E '^(demo-|'"$WEB"'|'"$APP"')' || true)
  if [ -n "$left" ]; then echo "left behind: $left"; rc=1; else echo "nothing left behind"; fi
  [ "$rc" = 0 ] && echo "demo finished" || echo "demo FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "make demo: run as root (it creates network namespaces)"; exit 1; }

# leftovers of an interrupted earlier demo (all idempotent)
for w in $WEB $APP; do "$NETMUX" -q down "$w" >/dev/null || true; done
"$NETMUX" -q lab down >/dev/null || true

global() {  # the first global address of workload $1
  "$NETMUX" status "$1" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["addresses"]["global"][0].split("/")[0])'
}

step "1. the lab: an upstream router namespace, mux, a veth 'NIC' adopted into mux, radvd"
run "$NETMUX" lab up
run ip -n demo-mux -br addr show
run ip -n $ROUTER -br addr show

step "2. two workloads: $WEB serves HTTP (busybox httpd, exec'd in place), $APP has no command"
mkdir -p /run/netmux-demo/www
echo "hello from $WEB" > /run/netmux-demo/www/index.html
printf '$ %s &\n' "netmux up $WEB --port tcp/80 -- busybox httpd -f -p [::]:80 -h /run/netmux-demo/www"
"$NETMUX" up $WEB --port tcp/80 -- busybox httpd -f -p '[::]:80' -h /run/netmux-demo/www &
web_pid=$!
run "$NETMUX" up $APP
for _ in $(seq 100); do
  "$NETMUX" status $WEB --json 2>/dev/null | grep -q '"state": "up"' && break
  sleep 0.05
done
run "$NETMUX" status
web=$(global $WEB)
app=$(global $APP)
echo "(ps: the workload's process is httpd itself: $(ps -o pid=,comm= -p "$web_pid"))"

step "3. $APP -> $WEB directly over host0, then HTTP"
run ip netns exec $APP ping -n -c 2 -i 0.2 "$web"
run ip netns exec $APP curl -sS -g --max-time 5 "http://[$web]/"

step "4. from upstream: the router reaches both workloads; they reach the router"
run ip netns exec $ROUTER ping -n -c 2 -i 0.2 "$web"
run ip netns exec $ROUTER ping -n -c 2 -i 0.2 "$app"
run ip netns exec $APP ping -n -c 2 -i 0.2 2001:db8::1

step "5. restart $WEB: same name, same address"
kill "$web_pid"; wait "$web_pid" 2>/dev/null || true; web_pid=""
run "$NETMUX" down $WEB
t0=$(date +%s%N)
"$NETMUX" up $WEB --port tcp/80 -- busybox httpd -f -p '[::]:80' -h /run/netmux-demo/www &
web_pid=$!
for _ in $(seq 100); do
  "$NETMUX" status $WEB --json 2>/dev/null | grep -q '"state": "up"' && break
  sleep 0.05
done
web2=$(global $WEB)
printf 'before: %s\nafter:  %s  (serving again %d ms after the restart)\n' "$web" "$web2" \
  $((($(date +%s%N) - t0) / 1000000))
[ "$web" = "$web2" ] && echo "address unchanged" || { echo "ADDRESS CHANGED"; exit 1; }
run ip netns exec $APP curl -sS -g --max-time 5 "http://[$web2]/"

step "6. the uplink: gw0's prefix was delegated by the router's kea (DHCPv6-PD) to dhcpcd in mux"
run ip -n demo-mux -br addr show dev gw0
if [ -e $RUN/dhcpcd.log ]; then
  echo "\$ grep 'delegated prefix' $RUN/dhcpcd.log"
  grep 'delegated prefix' $RUN/dhcpcd.log || { echo "no delegation in dhcpcd's log"; exit 1; }
else
  echo "(kea-dhcp6/dhcpcd/unbound not all installed: the lab put the prefix on gw0 statically)"
fi

step "7. $APP: a stable-privacy SLAAC address from that prefix, default route via gw0 (radvd)"
run ip -n $APP -br -6 addr show dev eth0
run ip -n $APP -6 route
run ip netns exec $APP ping -n -c 2 -i 0.2 2001:db8::53

step "8. DNS64 + NAT64: an IPv4-only web server, reached from an IPv6-only workload"
if ! [ -e $RUN/dhcpcd.log ] || ! command -v tayga >/dev/null; then
  echo "(skipped: needs tayga, kea-dhcp6, dhcpcd and unbound — make deps installs them)"
  exit 0
fi
echo "\$ netmux.lab.upstream.resolver_up  # unbound with DNS64 at fd64:cafe::53, a workload of its own"
"$PY" - <<'PY'
import sys
sys.argv[0] = "netmux"  # its log lines say who speaks
from netmux import config, lab
from netmux.lab import upstream
host = config.load_host()
print(f"resolver workload {upstream.resolver_up(host, lab.daemon_dir(host))} up")
print(f"mux's IPv4 lease (NAT64 masquerades behind it) after {upstream.wait_ipv4(host):.1f}s")
PY
run ip -n demo-mux -br addr show dev demoup0
run ip -n demo-mux -br link show dev nat64
run ip -n demo-mux -6 route show dev nat64
for d in /etc/netns /etc/netns/$APP; do  # removed at the end, innermost first
  if [ ! -e $d ]; then mkdir $d; netns_etc="$d $netns_etc"; fi
done
echo "nameserver fd64:cafe::53" > /etc/netns/$APP/resolv.conf
echo "(/etc/netns/$APP/resolv.conf: nameserver fd64:cafe::53 — radvd advertises it as RDNSS too)"
aaaa=""
for _ in $(seq 50); do  # unbound needs a moment to listen once its address is usable
  aaaa=$(ip netns exec $APP dig @fd64:cafe::53 v4only.isp.test AAAA +short +time=1 +tries=1 || true)
  [ -n "$aaaa" ] && break
  sleep 0.1
done
run ip netns exec $APP dig @fd64:cafe::53 v4only.isp.test A +short
run ip netns exec $APP dig @fd64:cafe::53 v4only.isp.test AAAA +short
[ -n "$aaaa" ] || { echo "no synthesized AAAA"; exit 1; }
echo "(the A record 203.0.113.80 inside the NAT64 prefix 2001:db8:64::/96: $aaaa)"
run ip netns exec $APP curl -sS --max-time 10 http://v4only.isp.test/
