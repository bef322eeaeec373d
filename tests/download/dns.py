"""A loopback DNS server that answers NXDOMAIN to every query (RFC 1035 header + question echo),
so tests of unreachable URLs send no query past 127.0.0.1. It counts the names asked."""

from __future__ import annotations

import socket
import threading
from collections import Counter


class NxDomainServer:
    """``with NxDomainServer() as dns: DownloadConfig(dns_servers=(dns.address,))``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stopped = False

    @property
    def address(self) -> str:
        """``host:port`` for ``download.dns_servers``."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> NxDomainServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = True
        self.sock.sendto(b"", ("127.0.0.1", self.port))
        self.thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopped:
            data, peer = self.sock.recvfrom(4096)
            if len(data) < 12:
                continue
            self.queries[_qname(data)] += 1
            flags = 0x8183 | (int.from_bytes(data[2:4], "big") & 0x0100)  # QR, RA, RD echoed, NXDOMAIN
            header = data[:2] + flags.to_bytes(2, "big") + data[4:6] + b"\0\0\0\0\0\0"
            self.sock.sendto(header + data[12:], peer)


def _qname(packet: bytes) -> str:
    labels, i = [], 12
    while i < len(packet) and packet[i]:
        n = packet[i]
        labels.append(packet[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels)
