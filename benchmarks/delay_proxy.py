"""An ssh ProxyCommand that adds a fixed one-way delay each way and counts the bytes on the wire:

    ssh -o ProxyCommand="python benchmarks/delay_proxy.py HOST PORT DELAY_S COUNTS.json" ...

stdin/stdout (ssh's side) <-> a TCP connection to HOST:PORT (sshd). Every chunk is passed on
DELAY_S after it arrived, in order, so the round trip grows by 2 x DELAY_S (DELAY_S = 0.05: +100
ms RTT). The counts are the encrypted SSH bytes each way (what a Wi-Fi link would carry, less
TCP/IP headers), written to COUNTS.json every 0.1 s and at the end.

Used by benchmarks/ssh_link.py where `tc qdisc ... netem` is not available (this kernel has no
sch_netem); nothing listens, the proxy only connects to the loopback sshd.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import deque


def main() -> int:
    host, port, delay, counts_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    counts = {"up": 0, "down": 0}
    done = threading.Event()

    def pipe(read, write, key: str) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        cond = threading.Condition()
        ended = []

        def sender() -> None:
            while True:
                with cond:
                    while not queue and not ended:
                        cond.wait()
                    if not queue and ended:
                        break
                    due, data = queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    write(data)
                except OSError:
                    break
            done.set()

        threading.Thread(target=sender, daemon=True).start()
        while True:
            try:
                data = read()
            except OSError:
                data = b""
            with cond:
                if not data:
                    ended.append(True)
                    cond.notify()
                    return
                counts[key] += len(data)
                queue.append((time.monotonic() + delay, data))
                cond.notify()

    def write_out(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]

    threading.Thread(target=pipe, args=(lambda: os.read(0, 65536), sock.sendall, "up"), daemon=True).start()
    threading.Thread(target=pipe, args=(lambda: sock.recv(65536), write_out, "down"), daemon=True).start()

    def dump() -> None:
        tmp = f"{counts_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({**counts, "time": time.time()}, f)
        os.replace(tmp, counts_path)

    while not done.wait(0.1):
        dump()
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
