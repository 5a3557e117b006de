"""A client that keeps the gateway's own CPU busy without giving the engine work.

Loops of chat requests whose prompt is too long for the context window: the
gateway reads and parses the ~345 kB body, renders and tokenizes ~145,000 tokens
(a new text each time), then answers 400 ``context_length_exceeded``. The client's own cost per request
(one pre-encoded body sent, a short answer read) is small beside the gateway's,
so what competes with the engine is the gateway process. Prints the number of
requests sent and their statuses when stopped (SIGTERM).

    python -m perf.voice_load.gateway_burst http://127.0.0.1:18200/v1 --concurrency 2
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import urllib.error
import urllib.request

WORDS = 50_000


SALT = b"SALT0000"


def body() -> bytes:
    """The request, with ``SALT`` where each request puts its own number: a text
    the gateway has not tokenized before (its tokenizer caches repeated texts)."""
    text = SALT.decode() + " " + " ".join(f"word{i % 97}" for i in range(WORDS))
    return json.dumps({"model": "electron", "max_tokens": 16,
                       "messages": [{"role": "user", "content": text}]}).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    payload = body()
    statuses: collections.Counter[int] = collections.Counter()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    counter = iter(range(10**8))

    def loop() -> None:
        while not stop.is_set():
            salted = payload.replace(SALT, b"SALT%04d" % (next(counter) % 10_000), 1)
            request = urllib.request.Request(f"{args.base_url}/chat/completions", data=salted,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    statuses[r.status] += 1
            except urllib.error.HTTPError as exc:
                statuses[exc.code] += 1
            except OSError:
                statuses[0] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    stop.wait()
    print(json.dumps({"requests": sum(statuses.values()), "statuses": dict(statuses)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
