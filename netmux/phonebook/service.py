"""phonebookd's composition: the core (daemon.Phonebook), its sinks (make_sinks: sinks.py's,
a member host's of hosts.py, delegation.py's), the fd store, and the adapters (the publish
socket, D-Bus, systemd unit watching over D-Bus), wired together and run until SIGTERM.
Nothing else knows which adapters or sinks exist."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import hosts, journal, sd
from ..config import HostConfig, load_host
from ..delegation import make_sink as delegation_sink
from ..errors import ConfigError, NetmuxError
from .daemon import Phonebook
from .records import Zones
from .sinks import (
    Rfc2136Sink,
    Sink,
    TinydnsSink,
    TsigKey,
    UpdateServer,
    _Coalescer,
    parse_tsig_key,
)


def make_sinks(cfg: HostConfig, zones: Zones) -> list[Sink]:
    """The sinks named in cfg.phonebook.sinks (a HostConfig)."""
    pb = cfg.phonebook
    out: list[Sink] = []
    for kind in dict.fromkeys(pb.sinks):
        if kind == "tinydns":
            if not pb.tinydns_data.exists():  # nothing could serve its records: no sink
                journal.warning(
                    f"phonebook: no tinydns sink: {pb.tinydns_data} is missing "
                    '(apt install tinydns, or [phonebook] sinks = ["rfc2136"])'
                )
                continue
            out.append(
                TinydnsSink(pb.tinydns_dir, pb.tinydns_data, pb.sighup_pidfile, pb.rebuild_interval)
            )
        elif kind == "rfc2136":
            if not pb.server:
                raise ConfigError(cfg.source, "phonebook.server", "", "the DNS server's address")
            key: TsigKey | Path
            try:
                key = parse_tsig_key(pb.tsig_key.read_text(), str(pb.tsig_key))
            except FileNotFoundError:
                key = pb.tsig_key  # first start: netmux@dns may start after phonebookd
                journal.info(f"phonebook: {pb.tsig_key} does not exist yet; read when it does")
            except OSError as e:
                raise ConfigError(
                    cfg.source, "phonebook.tsig_key", str(pb.tsig_key), f"a readable file ({e})"
                ) from None
            out.append(Rfc2136Sink(zones, UpdateServer(pb.server, pb.server_port, key)))
    member = hosts.make_sink(cfg, zones)  # a member's public records to the primary
    if member is not None:
        out.append(member)
    delegation = delegation_sink(cfg)  # the parent's NS + glue ([delegation])
    if delegation is not None:
        out.append(delegation)
    return out


class _QuietDBusErrors(logging.Filter):
    """dbus-next logs every intended DBusError as 'unexpected error': they are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unexpected error" not in record.getMessage()


async def serve(args: argparse.Namespace) -> int:
    cfg = load_host(args.config)
    zones = Zones.from_config(cfg)
    notifier = sd.Notifier()
    book = Phonebook(cfg, make_sinks(cfg, zones), notifier)
    stored = sd.listen_fds()
    listen_sock = None
    rest = []
    for fdname, fd in stored:
        if fdname == "publish" and listen_sock is None:
            listen_sock = fd
        else:
            rest.append((fdname, fd))
    n = book.restore(rest)
    if n:
        journal.info(f"restored {n} publication(s) from the fd store")
    book.refresh()  # the sinks get the zones (and lose records left by an earlier run) now
    from . import publish_socket

    publish_server = await publish_socket.start(book, cfg.phonebook.socket, listen_sock)
    bus = None
    if not args.no_dbus:
        from . import dbus

        bus = await dbus.start(book, args.bus_address)
        book.units = await dbus.SystemdUnits.start(bus, book)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier.notify(f"READY=1\nSTATUS=serving {len(book.pubs)} publication(s)")
    journal.info(f"ready ({', '.join(s.name for s in book.sinks) or 'no sinks'})")
    await stop.wait()
    notifier.notify("STOPPING=1")
    for sink in book.sinks:  # records that changed last must still reach the sinks, now
        if isinstance(sink, _Coalescer):
            sink.hurry()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sink.flush(), 3)
    publish_server.close()
    if bus is not None:
        bus.disconnect()  # type: ignore[no-untyped-call]
    await book.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="phonebookd", description="netmux DNS publisher")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--bus-address", default=None, help="default: the system bus")
    ap.add_argument("--no-dbus", action="store_true", help="serve the publish socket only")
    args = ap.parse_args(argv)
    logging.getLogger().addFilter(_QuietDBusErrors())  # dbus-next logs on the root logger
    logging.basicConfig(level=logging.WARNING)
    try:
        return asyncio.run(serve(args))
    except NetmuxError as e:
        journal.error(f"{e}")
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
