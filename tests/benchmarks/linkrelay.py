#!/usr/bin/env python
"""A TCP relay on loopback that behaves like a slow, distant link: bandwidth and delay in both directions.

    python tests/benchmarks/linkrelay.py --listen PORT --to PORT --mbit 20 --rtt-ms 40

Each direction is a bottleneck link: a chunk that arrives at the relay waits until the link is free, takes
`len / rate` to serialise, and is delivered `rtt / 2` after it left (propagation). The bottleneck queue is bounded
(`--queue-kib`): while more than that waits to be serialised the relay stops reading, so the sender sees TCP
back-pressure as it would from a real link (the relay's receive buffers are kept small for the same reason). A new
connection costs one round trip before its first byte moves (the TCP handshake). Not modelled: TCP slow start, loss,
TLS. bench_remote.py starts one relay per target and link; it is also usable by hand.

Not named test_*.py: pytest must not collect it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

PIECE = 16 * 1024          # serialisation granularity: 6.5 ms at 20 Mbit/s, 1.3 ms at 100 Mbit/s
RCVBUF = 64 * 1024


class Link:
    """One direction of the emulated link."""

    def __init__(self, mbit: float, rtt_ms: float, queue_kib: int) -> None:
        self.rate = mbit * 1e6 / 8            # bytes per second
        self.one_way = rtt_ms / 2000.0
        self.queue_s = queue_kib * 1024 / self.rate
        self.free_at = 0.0

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(pending, writer))
        try:
            while True:
                data = await reader.read(PIECE)
                now = loop.time()
                self.free_at = max(now, self.free_at) + len(data) / self.rate
                pending.put_nowait((self.free_at + self.one_way, data))
                if not data:
                    break
                backlog = self.free_at - loop.time()
                if backlog > self.queue_s:
                    await asyncio.sleep(backlog - self.queue_s)
            await deliver
        finally:
            deliver.cancel()

    @staticmethod
    async def _deliver(pending: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            at, data = await pending.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


async def _connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, args: argparse.Namespace,
                      up: Link, down: Link) -> None:
    await asyncio.sleep(args.rtt_ms / 1000.0)     # SYN, SYN-ACK, ACK: the request's first byte leaves after one RTT
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", args.to)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    try:
        await asyncio.gather(up.pump(client_r, server_w), down.pump(server_r, client_w))
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for w in (client_w, server_w):
            w.close()


async def serve(args: argparse.Namespace) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)   # inherited by accepted sockets
    sock.bind(("127.0.0.1", args.listen))
    # one link per direction shared by all connections: parallel downloads share the bandwidth, as on one user's line
    up, down = Link(args.mbit, args.rtt_ms, args.queue_kib), Link(args.mbit, args.rtt_ms, args.queue_kib)
    server = await asyncio.start_server(lambda r, w: _connection(r, w, args, up, down), sock=sock)
    print(f"relay 127.0.0.1:{args.listen} -> :{args.to} at {args.mbit} Mbit/s, {args.rtt_ms} ms RTT", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--to", type=int, required=True)
    p.add_argument("--mbit", type=float, required=True)
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--queue-kib", type=int, default=128, help="bottleneck queue per direction (default 128 KiB)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
