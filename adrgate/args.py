"""Argument types shared by the command-line modules."""

from __future__ import annotations

import argparse


def address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host may be in brackets) for argparse `type=`."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8081)")
    return host, int(port)
