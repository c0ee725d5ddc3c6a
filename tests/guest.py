"""A tiny real Linux guest for the `vm` tier and the VM bench, built from Debian packages.

Debian's cloud kernel (virtio_net and what it needs are modules: they go into the
initramfs) and busybox-static. The packages are fetched with `apt-get download` and
unpacked with `dpkg-deb -x` into the cache: nothing is installed on the host, whose own
kernel is never touched. The guest's /init loads the modules, brings eth0 up and lets the
kernel do SLAAC (EUI-64, or stable privacy when `netmuxtest.secret=` is on the kernel
command line), serves `hello from NAME` over HTTP on port 80 (busybox httpd), powers off
on `GET /cgi-bin/poweroff`, and prints its global addresses on the serial console.

The result (vmlinuz + initrd) is cached under CACHE, keyed by the kernel package's version
and this file's guest definition, and shared by concurrent runs (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("NETMUX_TEST_CACHE", "/var/cache/netmux-test"))
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# The modules virtio-net-pci needs; their dependencies are added from each .ko's modinfo.
MODULES = ("virtio_pci", "virtio_net")
# What building and booting the guest and talking to it needs (the `requires` marker).
PROGRAMS = ("qemu-system-x86_64", "cpio", "apt-get", "apt-cache", "dpkg-deb", "curl", "dig")
READY = "NETMUX-GUEST-READY"
ADDR = "NETMUX-GUEST-ADDR"

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /www/cgi-bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /lib/modules.order); do insmod /lib/modules/$m; done
arg() {{ sed -n "s/.*netmuxtest\\.$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }}
name=$(arg name)
secret=$(arg secret)
hostname "${{name:-guest}}"
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -n "$secret" ] && echo "$secret" > /proc/sys/net/ipv6/conf/eth0/stable_secret
echo 0 > /proc/sys/net/ipv6/conf/eth0/router_solicitation_delay
ip link set lo up
ip link set eth0 up
echo "hello from $name" > /www/index.html
printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho bye\\n' > /www/cgi-bin/poweroff
echo '(sleep 0.3; poweroff -f) </dev/null >/dev/null 2>&1 &' >> /www/cgi-bin/poweroff
chmod 755 /www/cgi-bin/poweroff
httpd -p 80 -h /www
echo {READY}
last=""
while true; do
  a=$(ip -6 -o addr show dev eth0 scope global | grep -v tentative | awk '{{print $4}}')
  a=$(echo $a)
  [ "$a" != "$last" ] && echo "{ADDR} $a" && last="$a"
  sleep 0.2
done
"""


@dataclass(frozen=True)
class Guest:
    """A built guest: the kernel and the initramfs QEMU boots."""

    kernel: Path
    initrd: Path


def _apt_download(pkg: str, into: Path) -> Path:
    r = subprocess.run(
        ["apt-get", "download", "-q", pkg], cwd=into, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"apt-get download {pkg}: {r.stderr.strip()}")
    debs = sorted(into.glob(f"{pkg}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {pkg} left no .deb in {into}")
    return debs[-1]


def kernel_package() -> tuple[str, str]:
    """(package, version) the cloud kernel metapackage depends on, from the apt cache."""
    out = subprocess.run(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", KERNEL_META],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"Depends: (linux-image-\S+)", out)
    if not m:
        raise RuntimeError(f"{KERNEL_META} depends on no linux-image package here")
    pkg = m.group(1)
    ver = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", pkg], capture_output=True, text=True, check=True
    ).stdout
    v = re.search(r"^Version: (\S+)", ver, re.M)
    return pkg, v.group(1) if v else "unknown"


def module_depends(data: bytes) -> list[str]:
    """The `depends=` of a module's .modinfo section (NUL-separated key=value). Pure."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _modules_in_order(moddir: Path) -> list[tuple[str, bytes]]:
    """MODULES and their dependencies, dependencies first, decompressed; those built into
    the kernel (modules.builtin: virtio_pci on Debian 13) are left out."""
    files: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        files[p.name.split(".ko")[0].replace("-", "_")] = p
    builtin = moddir / "modules.builtin"
    text = builtin.read_text() if builtin.exists() else ""
    order: list[tuple[str, bytes]] = []
    seen: set[str] = {Path(line).name.split(".ko")[0].replace("-", "_") for line in text.split()}

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in files:
            raise RuntimeError(f"module {name} is not in the kernel package")
        data = _module_bytes(files[name])
        for dep in module_depends(data):
            visit(dep)
        order.append((name, data))

    for m in MODULES:
        visit(m)
    return order


def build(dest: Path) -> Guest:
    """Download, unpack and assemble the guest into `dest` (vmlinuz, initrd)."""
    kpkg, _ = kernel_package()
    with tempfile.TemporaryDirectory(prefix="guest-", dir=dest.parent) as t:
        tmp = Path(t)
        for pkg in (kpkg, BUSYBOX):
            deb = _apt_download(pkg, tmp)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        x = tmp / "x"
        vmlinuz = sorted((x / "boot").glob("vmlinuz-*"))
        mods = sorted(p for p in (x / "lib" / "modules").glob("*") if p.is_dir()) or sorted(
            p for p in (x / "usr" / "lib" / "modules").glob("*") if p.is_dir()
        )
        if not vmlinuz or not mods:
            raise RuntimeError(f"{kpkg}: no vmlinuz or modules in the package")
        root = tmp / "root"
        (root / "bin").mkdir(parents=True)
        (root / "lib" / "modules").mkdir(parents=True)
        bb = [p for p in (x / "bin" / "busybox", x / "usr" / "bin" / "busybox") if p.exists()]
        if not bb:
            raise RuntimeError(f"{BUSYBOX}: no busybox in the package")
        shutil.copy2(bb[0], root / "bin" / "busybox")  # /usr/bin on Debian 13 (merged /usr)
        names = []
        for name, data in _modules_in_order(mods[-1]):
            (root / "lib" / "modules" / f"{name}.ko").write_bytes(data)
            names.append(f"{name}.ko")
        (root / "lib" / "modules.order").write_text("\n".join(names) + "\n")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        listing = subprocess.run(
            ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
        ).stdout
        with (tmp / "initrd").open("wb") as out:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                cwd=root, input=listing, stdout=out, check=True,
            )  # fmt: skip
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vmlinuz[-1], dest / "vmlinuz")
        shutil.copy2(tmp / "initrd", dest / "initrd")
    return Guest(dest / "vmlinuz", dest / "initrd")


def cached() -> Guest:
    """The guest for this kernel version and guest definition, built once per machine."""
    kpkg, kver = kernel_package()
    key = hashlib.sha256(f"{kpkg} {kver}\n{INIT}\n{MODULES}".encode()).hexdigest()[:12]
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / f"guest-{key}"
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            g = Guest(dest / "vmlinuz", dest / "initrd")
            if g.kernel.exists() and g.initrd.exists():
                return g
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(dest)
            return build(dest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def qemu_argv(g: Guest, name: str, log: Path, secret: str | None = None) -> list[str]:
    """`qemu-system-x86_64 -accel tcg ...` for netmux (with {tapfd} and {mac} to fill in)."""
    append = f"console=ttyS0 panic=-1 quiet netmuxtest.name={name}"
    if secret:
        append += f" netmuxtest.secret={secret}"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-serial", f"file:{log}", "-monitor", "none",
        "-kernel", str(g.kernel), "-initrd", str(g.initrd), "-append", append,
        "-netdev", "tap,id=n0,fd={tapfd}",
        "-device", "virtio-net-pci,netdev=n0,mac={mac},romfile=",
    ]  # fmt: skip


def addresses(log: Path) -> list[str]:
    """The guest's global addresses it last printed on its console (without /len)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith(ADDR)]
    except FileNotFoundError:
        return []
    return [a.split("/")[0] for a in lines[-1].split()[1:]] if lines else []
