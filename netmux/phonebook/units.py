"""Unit watching, as the phonebook core sees it: "tell me when this unit stops".

A publication made from inside a systemd service also goes when that service stops (not
only when its lifelines close). The core asks a `UnitWatcher`; the composition
(service.py) gives it the D-Bus one (dbus.SystemdUnits) when phonebookd is on a bus, and
`NoUnits` otherwise, so no adapter depends on another.
"""

from __future__ import annotations

from typing import Protocol


class UnitWatcher(Protocol):
    async def watch(self, unit: str) -> None:
        """Call the phonebook's drop_unit(unit) once `unit` is inactive. Best effort."""


class NoUnits:
    """No bus, no systemd: publications go with their lifelines only."""

    async def watch(self, unit: str) -> None:
        return None
