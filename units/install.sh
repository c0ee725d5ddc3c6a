#!/bin/bash
# `make install` / `make uninstall`: netmux from this checkout onto a real host, no .deb.
#
# - The package goes into a private venv, $LIBDIR/venv, made from Debian's python3 with
#   --system-site-packages (it sees python3-systemd and python3-nftables) and filled with
#   pip from this checkout (pyroute2 0.9 etc. from PyPI). Nothing lands in the system's
#   site-packages, so Debian's python3-pyroute2 0.7 and PEP 668 stay untouched, and
#   `make uninstall` (or rm -r $LIBDIR) removes it all.
# - Console scripts: symlinks in $BINDIR to the venv's scripts.
# - Units ($UNITDIR), udev rules ($UDEVRULESDIR), D-Bus policy and activation files, docs,
#   man pages and examples, with @BINDIR@ (and @DOCDIR@) filled in.
# - $SYSCONFDIR/netmux/netmux.toml only if there is none; nothing is enabled or started:
#   netmux-mux moves the uplink NICs, which must be a deliberate step.
# DESTDIR stages everything under a root (for packaging or inspection): the venv is built
# there and its absolute paths rewritten to the final ones.
# Every installed file is listed in $LIBDIR/installed-files, which uninstall reads.
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBDIR=${LIBDIR:-$PREFIX/lib/netmux}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
UDEVRULESDIR=${UDEVRULESDIR:-$PREFIX/lib/udev/rules.d}
DATADIR=${DATADIR:-$PREFIX/share}
DOCDIR=${DOCDIR:-$DATADIR/doc/netmux}
MANDIR=${MANDIR:-$DATADIR/man}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DBUSPOLICYDIR=${DBUSPOLICYDIR:-$SYSCONFDIR/dbus-1/system.d}
# sysctl.d: the vendor directory for a /usr install, else /etc/sysctl.d (read by every
# sysctl implementation, not only systemd-sysctl).
if [ "$PREFIX" = /usr ]; then SYSCTLDIR=${SYSCTLDIR:-/usr/lib/sysctl.d}; else SYSCTLDIR=${SYSCTLDIR:-$SYSCONFDIR/sysctl.d}; fi
DBUSSERVICEDIR=${DBUSSERVICEDIR:-$DATADIR/dbus-1/system-services}
PYTHON=${PYTHON:-/usr/bin/python3}

SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV=$LIBDIR/venv
MANIFEST=$DESTDIR$LIBDIR/installed-files

subst() { sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" "$1"; }

# put SRC DEST MODE: install one file, placeholders filled in, atomically; record it.
put() {
	install -d "$DESTDIR$(dirname "$2")"
	subst "$1" >"$DESTDIR$2.tmp"
	chmod "$3" "$DESTDIR$2.tmp"
	mv -f "$DESTDIR$2.tmp" "$DESTDIR$2"
	echo "$2" >>"$MANIFEST"
}

do_install() {
	if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
		echo "make install: run as root (or set DESTDIR to stage the files)" >&2
		exit 1
	fi
	echo "install: venv $VENV"
	install -d "$DESTDIR$LIBDIR"
	: >"$MANIFEST"
	[ -x "$DESTDIR$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$DESTDIR$VENV"
	"$DESTDIR$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
		--no-compile --upgrade "$SRC"
	if [ -n "$DESTDIR" ]; then # the venv was built at its staging path: point it home
		grep -rlI --null -F "$DESTDIR$VENV" "$DESTDIR$VENV/bin" "$DESTDIR$VENV/pyvenv.cfg" |
			xargs -0 -r sed -i "s|$DESTDIR$VENV|$VENV|g"
	fi

	install -d "$DESTDIR$BINDIR"
	for s in $("$PYTHON" -c 'import sys, tomllib
print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["scripts"])' "$SRC/pyproject.toml"); do
		ln -sfn "$VENV/bin/$s" "$DESTDIR$BINDIR/$s"
		echo "$BINDIR/$s" >>"$MANIFEST"
	done

	for f in "$SRC"/units/*.service "$SRC"/units/*.socket "$SRC"/units/*.target \
		"$SRC"/units/*.path "$SRC"/units/*.timer; do
		[ -e "$f" ] && put "$f" "$UNITDIR/$(basename "$f")" 644
	done
	for f in "$SRC"/udev/*.rules; do
		[ -e "$f" ] && put "$f" "$UDEVRULESDIR/$(basename "$f")" 644
	done
	for f in "$SRC"/dbus/*.conf; do
		[ -e "$f" ] && put "$f" "$DBUSPOLICYDIR/$(basename "$f")" 644
	done
	for f in "$SRC"/dbus/*.service; do
		[ -e "$f" ] && put "$f" "$DBUSSERVICEDIR/$(basename "$f")" 644
	done

	for f in "$SRC"/sysctl/*.conf; do # neighbour table limits for many workloads
		[ -e "$f" ] && put "$f" "$SYSCTLDIR/$(basename "$f")" 644
	done

	for f in "$SRC"/README.md "$SRC"/docs/*.md; do
		[ -e "$f" ] && put "$f" "$DOCDIR/$(basename "$f")" 644
	done
	for f in "$SRC"/docs/examples/*; do
		[ -f "$f" ] && put "$f" "$DOCDIR/examples/$(basename "$f")" 644
	done
	(cd "$SRC/units/examples" && find . -type f) | while read -r f; do
		put "$SRC/units/examples/$f" "$DOCDIR/examples/units/${f#./}" 644
	done
	for f in "$SRC"/docs/man/*.[1-8]; do
		[ -e "$f" ] && put "$f" "$MANDIR/man${f##*.}/$(basename "$f")" 644
	done

	install -d "$DESTDIR$SYSCONFDIR/netmux/workloads"
	if [ ! -e "$DESTDIR$SYSCONFDIR/netmux/netmux.toml" ] && [ -e "$SRC/docs/examples/netmux.toml" ]; then
		install -m 644 "$SRC/docs/examples/netmux.toml" "$DESTDIR$SYSCONFDIR/netmux/netmux.toml"
	fi

	if [ -z "$DESTDIR" ]; then
		if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
		if command -v udevadm >/dev/null && udevadm control --ping 2>/dev/null; then
			udevadm control --reload || true
		fi
		cat <<-EOF
			install: done. Nothing is enabled or started. Next (docs/systemd.md):
			  edit $SYSCONFDIR/netmux/netmux.toml ([mux] uplinks: the NICs netmux-mux will move)
			  sysctl -p $SYSCTLDIR/90-netmux.conf   # or reboot: neighbour table room for many workloads
			  systemctl enable --now netmux.target netmux-mux.service netmux-radvd.service netmux-dhcpcd.service
			  systemctl enable --now netmux-tayga.service netmux-jool.service   # NAT64, one of the two runs ([nat64]; DNS64: recipes/resolver)
			  systemctl start netmux@NAME
		EOF
	fi
}

do_uninstall() {
	if [ -e "$MANIFEST" ]; then
		while read -r f; do rm -f "$DESTDIR$f"; done <"$MANIFEST"
	fi
	rm -rf "${DESTDIR:?}$VENV" "$MANIFEST"
	rmdir "$DESTDIR$LIBDIR" "$DESTDIR$DOCDIR/examples/units/"* "$DESTDIR$DOCDIR/examples/units" \
		"$DESTDIR$DOCDIR/examples" "$DESTDIR$DOCDIR" 2>/dev/null || true
	if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
	echo "uninstall: done ($SYSCONFDIR/netmux is kept)"
}

case "${1:-install}" in
install) do_install ;;
uninstall) do_uninstall ;;
*)
	echo "usage: $0 install|uninstall" >&2
	exit 2
	;;
esac
