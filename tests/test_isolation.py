"""Tests reach no machine but this one: conftest lets a test process
connect only to loopback addresses (the download tests' servers)."""

import socket

import conftest
import pytest


class FakeSocket:
    def __init__(self, family):
        self.family = family


def test_only_loopback_connections_get_through():
    reached = []
    guarded = conftest._loopback_only(
        lambda sock, address, *args: reached.append(address)
    )
    for address, family in (
        (("127.0.0.1", 8000), socket.AF_INET),
        (("localhost", 8000), socket.AF_INET),
        (("::1", 8000, 0, 0), socket.AF_INET6),
        ("/tmp/some.sock", socket.AF_UNIX),
    ):
        guarded(FakeSocket(family), address)
    assert len(reached) == 4
    for host in ("192.0.2.1", "github.com", "download.openmmlab.com"):
        with pytest.raises(conftest.OffMachineConnectionError, match=host):
            guarded(FakeSocket(socket.AF_INET), (host, 443))
    assert len(reached) == 4


def test_every_socket_of_a_test_process_is_guarded():
    assert socket.socket.connect.__name__ == "guarded"
    assert socket.socket.connect_ex.__name__ == "guarded"
