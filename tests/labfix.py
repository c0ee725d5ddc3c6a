"""The `lab_host` fixture: a lab whose names are this run's, torn down whatever happened."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netmux import config, lab, workload
from netmux.config import HostConfig
from netmux.errors import NetmuxError
from tests.conftest import RUN


@pytest.fixture
def lab_host(tmp_config: Callable[..., Path], uname: Callable[[str], str]) -> Iterator[HostConfig]:
    """A lab config (router netns, uplink) named for this run; `lab down` after the test."""
    router = uname("rt")
    path = tmp_config(f'[lab]\nrouter_netns = "{router}"\nuplink = "{RUN}ulab"\n')
    host = config.load_host(path)
    try:
        yield host
    finally:
        for name in workload.known(host):
            with contextlib.suppress(NetmuxError):  # lab.down(force=True) retries and says
                workload.down(host, name)
        lab.down(host, force=True)
