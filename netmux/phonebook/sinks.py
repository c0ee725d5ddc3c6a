"""Where records go: a tinydns data file (+ data.cdb, SIGHUP) and RFC 2136 updates with TSIG.

Every sink is handed the complete desired record set after each change (`update`) and
decides itself when to act: the tinydns sink rebuilds data.cdb at most once per
`rebuild_interval` however many changes arrive; the RFC 2136 sink sends the difference to
what the server was last told, coalescing changes that arrive while an update is in flight.
Records come from records.py, which validated every name and address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import files, journal
from ..errors import ConfigError
from .records import Record, Zones, render_tinydns


class Sink(Protocol):
    name: str

    def update(self, records: list[Record]) -> None: ...

    async def flush(self) -> None: ...

    async def synced(self) -> None:
        """Returns once the records of the last `update` are in (served or rebuilt)."""
        ...

    async def close(self) -> None: ...


class _Coalescer:
    """Runs `work()` after changes, at most once per `interval`, never two at a time."""

    name = "sink"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = -1e9
        self.dirty = False
        self.task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.hurried = asyncio.Event()
        # Generations: `update` n is in once done >= n. `synced` waits for that, not for
        # idle, so a steady stream of changes cannot starve a waiter.
        self.gen = 0
        self.done = 0
        self.progress = asyncio.Condition()
        self.last_error = ""

    def hurry(self) -> None:
        """No more waiting between runs (shutdown: the last state goes out now)."""
        self.interval = 0.0
        self.hurried.set()

    def kick(self) -> None:
        self.gen += 1
        self.dirty = True
        self.idle.clear()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.dirty:
                wait = self.last + self.interval - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.hurried.wait(), wait)
                self.dirty = False
                self.last = time.monotonic()
                gen = self.gen
                try:
                    await self.work()
                    self.done, self.last_error = gen, ""
                    async with self.progress:
                        self.progress.notify_all()
                except Exception as e:  # a sink failing must not stop the daemon
                    self.last_error = str(e)
                    journal.error(f"phonebook sink {self.name} failed (retrying in 1 s): {e}")
                    self.dirty = True
                    await asyncio.sleep(max(self.interval, 1.0))
        finally:
            self.idle.set()

    async def work(self) -> None:
        raise NotImplementedError

    async def wait_idle(self) -> None:
        await self.idle.wait()

    async def flush(self) -> None:
        """The Sink protocol: every update so far written out (or given up on)."""
        await self.wait_idle()

    async def close(self) -> None:
        await self.cancel()

    async def synced(self) -> None:
        gen = self.gen
        async with self.progress:
            await self.progress.wait_for(lambda: self.done >= gen)

    async def cancel(self) -> None:
        if self.task and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# --- tinydns -----------------------------------------------------------------------------


class TinydnsSink(_Coalescer):
    """`data` written atomically, `tinydns-data` run in its directory, SIGHUP to a pidfile."""

    name = "tinydns"

    def __init__(
        self,
        directory: Path,
        tinydns_data: Path = Path("/usr/sbin/tinydns-data"),
        sighup_pidfile: str = "",
        interval: float = 1.0,
    ) -> None:
        super().__init__(interval)
        self.dir = directory
        self.tinydns_data = tinydns_data
        self.pidfile = Path(sighup_pidfile) if sighup_pidfile else None
        self.records: list[Record] = []
        self.written: str | None = None
        self.rebuilds: list[float] = []  # monotonic times of each data.cdb build

    def update(self, records: list[Record]) -> None:
        self.records = records
        self.kick()

    async def work(self) -> None:
        text = render_tinydns(self.records)
        if text == self.written:
            return
        # Not "data.tmp" (tinydns-data's own temporary cdb): write_atomic uses .data.*.tmp
        files.write_atomic(self.dir / "data", text)
        proc = await asyncio.create_subprocess_exec(
            str(self.tinydns_data),
            cwd=self.dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.tinydns_data} failed: {err.decode(errors='replace')}")
        self.written = text
        self.rebuilds.append(time.monotonic())
        journal.debug(f"rebuilt {self.dir}/data.cdb ({text.count(chr(10))} lines)")
        self._sighup()

    def _sighup(self) -> None:
        if not self.pidfile:
            return
        try:
            pid = int(self.pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as e:
            journal.warning(f"phonebook: cannot SIGHUP the process in {self.pidfile}: {e}")


# --- RFC 2136 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: bytes = field(repr=False)


_KEY_FIELD = re.compile(r"^\s*-?\s*(id|algorithm|secret)\s*:\s*\"?([A-Za-z0-9+/=._-]+)\"?\s*$")
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")


def parse_tsig_key(text: str, source: str) -> TsigKey:
    """The first key of a Knot `key:` file (id, algorithm, secret), checked."""
    got: dict[str, str] = {}
    for line in text.splitlines():
        m = _KEY_FIELD.match(line)
        if m and m.group(1) not in got:
            got[m.group(1)] = m.group(2)
    for k in ("id", "algorithm", "secret"):
        if k not in got:
            raise ConfigError(source, k, "(missing)", "a Knot key file with id, algorithm, secret")
    if got["algorithm"] not in ALGORITHMS:
        raise ConfigError(source, "algorithm", got["algorithm"], "one of " + ", ".join(ALGORITHMS))
    try:
        secret = base64.b64decode(got["secret"], validate=True)
    except ValueError:
        raise ConfigError(source, "secret", "(hidden)", "base64") from None
    return TsigKey(got["id"], got["algorithm"], secret)


def render_tsig_key(key: TsigKey) -> str:
    """A Knot `key:` file (Knot includes it; phonebookd reads it)."""
    secret = base64.b64encode(key.secret).decode()
    return f"key:\n  - id: {key.name}\n    algorithm: {key.algorithm}\n    secret: {secret}\n"


RRKey = tuple[str, str]  # (owner name, rtype)


def _rrsets(records: Iterable[Record]) -> dict[RRKey, frozenset[str]]:
    out: dict[RRKey, set[str]] = {}
    for r in records:
        if r.rtype in ("SOA", "NS"):
            continue  # the server's zone file owns these
        out.setdefault((r.name, r.rtype), set()).add(r.value)
    return {k: frozenset(v) for k, v in out.items()}


@dataclass(frozen=True)
class UpdateServer:
    """Where a sink sends its signed updates. `key`: the key, or the path of a key file that
    does not exist yet (the dns workload makes it when it first starts): read at the first
    update that needs it."""

    address: str
    port: int
    key: TsigKey | Path
    timeout: float = 3.0


class Rfc2136Sink(_Coalescer):
    """Dynamic updates (RFC 2136) signed with TSIG, one message per zone per change."""

    name = "rfc2136"

    def __init__(self, zones: Zones, to: UpdateServer, interval: float = 0.0) -> None:
        super().__init__(interval)
        self.zones = zones
        self.server = to.address
        self.port = to.port
        self.key_path = to.key if isinstance(to.key, Path) else None
        self._key = to.key if isinstance(to.key, TsigKey) else None
        self.timeout = to.timeout
        self.desired: dict[RRKey, frozenset[str]] = {}
        self.sent: dict[RRKey, frozenset[str]] | None = None  # None: not yet synced
        self.updates = 0

    def update(self, records: list[Record]) -> None:
        self.desired = _rrsets(records)
        self.kick()

    @property
    def key(self) -> TsigKey:
        if self._key is None:
            assert self.key_path is not None
            try:
                text = self.key_path.read_text()
            except FileNotFoundError:
                raise RuntimeError(
                    f"TSIG key {self.key_path} does not exist yet (the dns workload makes it)"
                ) from None
            self._key = parse_tsig_key(text, str(self.key_path))
        return self._key

    def _keyring(self) -> tuple[Any, Any]:
        import dns.name
        import dns.tsigkeyring

        name = dns.name.from_text(self.key.name)
        return dns.tsigkeyring.from_text(
            {self.key.name: base64.b64encode(self.key.secret).decode()}
        ), name

    async def _server_state(self) -> dict[RRKey, frozenset[str]]:
        """What the server holds now (AXFR), so records left by a crash get removed."""
        import dns.query

        keyring, keyname = self._keyring()
        out: dict[RRKey, set[str]] = {}
        for zone in self.zones.all_zones():

            def fetch(zone: str = zone) -> list[tuple[str, str, str]]:
                rows = []
                for msg in dns.query.xfr(
                    self.server,
                    zone + ".",
                    port=self.port,
                    keyring=keyring,
                    keyname=keyname,
                    keyalgorithm=self.key.algorithm,
                    lifetime=self.timeout,
                    relativize=False,
                ):
                    for rrset in msg.answer:
                        for rd in rrset:
                            rows.append((rrset.name.to_text(), rrset.rdtype.name, rd.to_text()))
                return rows

            try:
                rows = await asyncio.to_thread(fetch)
            except Exception as e:
                journal.warning(f"phonebook: AXFR of {zone} from {self.server} failed: {e}")
                continue
            for owner, rtype, value in rows:
                owner = owner.rstrip(".").lower()
                if rtype in ("A", "AAAA", "PTR") and self.zones.zone_of(owner) == zone:
                    out.setdefault((owner, rtype), set()).add(value.rstrip(".").lower())
        return {k: frozenset(v) for k, v in out.items()}

    async def work(self) -> None:
        if self.sent is None:
            self.sent = await self._server_state()
        desired = self.desired
        changes: dict[str, list[tuple[RRKey, frozenset[str]]]] = {}
        for key in set(desired) | set(self.sent):
            want = desired.get(key, frozenset())
            if want != self.sent.get(key, frozenset()):
                zone = self.zones.zone_of(key[0])
                if zone is not None:
                    changes.setdefault(zone, []).append((key, want))
        # One message per zone, all in flight at once: Knot holds an update of a zone that
        # changed less than a second before, in an earlier second, until a second after
        # that change (docs/benchmarks.md, "Start to AAAA under systemd"), and zones must
        # not wait behind each other for that.
        results = await asyncio.gather(
            *(self._send(zone, items) for zone, items in sorted(changes.items())),
            return_exceptions=True,
        )
        for (_, items), res in zip(sorted(changes.items()), results, strict=True):
            if isinstance(res, BaseException):
                continue
            for key, want in items:
                if want:
                    self.sent[key] = want
                else:
                    self.sent.pop(key, None)
            self.updates += 1
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # A timed-out update may still be applied (Knot reads it later): what the server
            # holds is unknown now, so the retry reads it back (AXFR) first.
            self.sent = None
            raise RuntimeError(str(failed[0]) or type(failed[0]).__name__)

    async def _send(self, zone: str, items: list[tuple[RRKey, frozenset[str]]]) -> None:
        import dns.asyncquery
        import dns.rcode
        import dns.update

        keyring, keyname = self._keyring()
        upd = dns.update.UpdateMessage(
            zone + ".", keyring=keyring, keyname=keyname, keyalgorithm=self.key.algorithm
        )
        for (owner, rtype), want in items:
            if want:
                value = [v + "." if rtype == "PTR" else v for v in sorted(want)]
                upd.replace(owner + ".", self.zones.ttl, rtype, *value)
            else:
                upd.delete(owner + ".", rtype)
        t0 = time.monotonic()
        resp = await dns.asyncquery.tcp(upd, self.server, timeout=self.timeout, port=self.port)
        took = time.monotonic() - t0
        if took > 0.25:
            journal.debug(f"update of {zone} took {took:.3f}s at {self.server}")
        if resp.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(
                f"update of {zone} refused by {self.server}: {dns.rcode.to_text(resp.rcode())}"
            )
