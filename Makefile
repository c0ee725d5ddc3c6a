# netmux — set-up, tests, lint, demo. Run as root on Debian 12 or 13.
#   make demo   the whole system, live, in namespaces of its own
#   make demo-hosts   two netmux hosts, one name service (docs/hosts.md), live
#   make test   installs what it needs, then every test tier
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
PYTEST_ARGS ?=
# System packages. REQUIRED must exist on Debian 12 and 13; OPTIONAL are installed where
# the release has them (tests that need a missing one skip with the reason); udev gives
# the udev-rule test its udevadm (udevd itself is never started here).
APT_REQUIRED := iproute2 iputils-ping radvd dhcpcd-base nftables python3-nftables \
	python3-systemd python3-venv python3-dev python3-pip libsystemd-dev pkg-config gcc \
	systemd systemd-container dbus kea-dhcp6-server unbound knot knot-dnsutils \
	bind9-dnsutils ndisc6 tcpdump curl containernetworking-plugins busybox procps git groff-base \
	qemu-system-x86 cpio iperf3
# The vm tier's guest (tests/guest.py) is made of these, fetched with `apt-get download` and
# unpacked into its cache, never installed: the host's kernel and busybox stay as they are.
APT_GUEST := linux-image-cloud-amd64 busybox-static
APT_OPTIONAL := tayga tinydns udev
# debian/ packaging (make package) needs these on top; APT_WHERE_PRESENT are installed on
# the releases that have them (systemd-dev: Debian 13's home of the unit directory
# pkg-config file, part of systemd itself on Debian 12).
APT_PACKAGING := build-essential debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools dpkg-dev lintian mmdebstrap
APT_WHERE_PRESENT := systemd-dev

.PHONY: help deps venv test test-unit test-fresh lint demo demo-hosts bench clean install uninstall package

help:
	@sed -n '1,4p' Makefile

# Idempotent: installs only what is missing, then the venv. Daemons installed here are
# not started (policy-rc.d): netmux runs its own instances inside namespaces.
deps:
	@missing=""; for p in $(APT_REQUIRED) $(APT_PACKAGING); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	for p in $(APT_OPTIONAL) $(APT_WHERE_PRESENT); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' && continue; \
	  apt-cache show $$p >/dev/null 2>&1 || { apt-get update -qq >/dev/null; apt-cache show $$p >/dev/null 2>&1; } \
	    && missing="$$missing $$p" || case " $(APT_OPTIONAL) " in *" $$p "*) \
	    echo "deps: optional package $$p is not available here; its tests will skip";; esac; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq; \
	  own=""; if [ ! -e /usr/sbin/policy-rc.d ]; then own=1; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi
	@for p in $(APT_GUEST); do apt-cache show $$p >/dev/null 2>&1 || { apt-get update -qq; break; }; done
	@$(MAKE) --no-print-directory venv

# The venv sees Debian's python3-nftables and python3-systemd; pyroute2 0.9 comes from PyPI.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# NETMUX_OPTIONAL: the only packages whose absence may skip a test; any other missing tool
# fails its test (tests/conftest.py, the `requires` marker).
test: deps
	@test "$$(id -u)" = 0 || { echo "make test: run as root (netns and system tiers need it)"; exit 1; }
	NETMUX_OPTIONAL="$(APT_OPTIONAL)" $(PY) -m pytest -m "unit or netns or system or vm" $(PYTEST_ARGS)

# The README's two commands, exactly as written, on a fresh minimal Debian root of RELEASE
# (bookworm or trixie) in a container (tests/fresh_root.py): the proof that the set-up is
# complete. Needs only mmdebstrap and systemd-nspawn here.
RELEASE ?= trixie
test-fresh:
	@test "$$(id -u)" = 0 || { echo "make test-fresh: run as root"; exit 1; }
	@command -v mmdebstrap >/dev/null && command -v systemd-nspawn >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends mmdebstrap systemd-container git; }
	/usr/bin/python3 tests/fresh_root.py $(RELEASE) $(FRESH_ARGS)

# By marker, not by directory: a file of a higher tier may hold unit tests too
# (tests/netns/test_delegation.py).
test-unit: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check netmux tests bench
	$(VENV)/bin/ruff format --check netmux tests bench
	$(VENV)/bin/mypy

# A lab router, two workloads, pings both ways, a restart with the same address; all in
# demo-only namespaces (docs/examples/demo.toml), removed at the end even on failure.
demo: deps
	@test "$$(id -u)" = 0 || { echo "make demo: run as root (it creates network namespaces)"; exit 1; }
	@NETMUX=$(abspath $(VENV))/bin/netmux docs/examples/demo.sh

# Several hosts (docs/hosts.md): `netmux lab up --hosts 2`, names across hosts, one switched
# off and on again; namespaces of docs/examples/hosts-demo.toml, removed at the end.
demo-hosts: deps
	@test "$$(id -u)" = 0 || { echo "make demo-hosts: run as root (it creates network namespaces)"; exit 1; }
	@NETMUX=$(abspath $(VENV))/bin/netmux docs/examples/hosts-demo.sh

# Every bench in sequence, each in namespaces of its own (bench/README.md); each writes
# bench/results/NAME.json. BENCH_ARGS=--quick for a smoke run of all of them; BENCHES=...
# for some (e.g. `make bench BENCHES=lifecycle BENCH_ARGS=--raise-limits`).
BENCHES ?= lifecycle crash uplink firewall dataplane phonebook knot_updates systemd_dns boot hosts launch vm
bench: deps
	@test "$$(id -u)" = 0 || { echo "make bench: run as root"; exit 1; }
	@set -e; for b in $(BENCHES); do echo "== bench.$$b $(BENCH_ARGS)"; \
	  $(PY) -m bench.$$b $(BENCH_ARGS); done

# The Debian package, built out of tree (dist/build/), lintian-checked; the .deb lands in
# dist/. Downloads the pinned pyroute2 wheel it vendors (debian/README.source).
package:
	@test "$$(id -u)" = 0 || { echo "make package: run as root (it installs build dependencies)"; exit 1; }
	APT_PACKAGING="$(APT_PACKAGING)" bash debian/make-package $(CURDIR)/dist

# netmux from this checkout onto a real host without a .deb (docs/systemd.md): the package in
# a private venv under LIBDIR, console scripts in BINDIR, units, udev rules, D-Bus policy,
# docs and examples; @BINDIR@ in units and rules is filled in. PREFIX/DESTDIR aware; nothing
# is enabled or started. `make uninstall` removes what install recorded.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib/netmux
UNITDIR ?= $(PREFIX)/lib/systemd/system
UDEVRULESDIR ?= $(PREFIX)/lib/udev/rules.d
SYSCONFDIR ?= /etc
INSTALL_ENV = PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" BINDIR="$(BINDIR)" LIBDIR="$(LIBDIR)" \
	UNITDIR="$(UNITDIR)" UDEVRULESDIR="$(UDEVRULESDIR)" SYSCONFDIR="$(SYSCONFDIR)"

install:
	$(INSTALL_ENV) units/install.sh install

uninstall:
	$(INSTALL_ENV) units/install.sh uninstall

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
