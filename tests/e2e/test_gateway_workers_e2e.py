"""Several gateway worker processes on one port (``ELECTRON_GATEWAY_WORKERS``): the real
tritonserver, ``electron-serve`` with two workers, a real Redis for the shared caps,
the official SDK and raw HTTP. Which worker holds a connection is read from /proc."""

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx2
import pytest

from gateway.api.metrics import LIVE_REFRESH_S
from tests.support.stack import ASK, LONG, MODEL, Stack, cli, create_key, sdk, serve_once

pytestmark = pytest.mark.e2e


def worker_pids(parent_pid: int) -> list[int]:
    """The pool's worker processes: children of ``electron-serve`` started by multiprocessing's spawn."""
    pids = []
    for task in Path(f"/proc/{parent_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return sorted(pids)


def established_connections(pid: int, port: int) -> int:
    """TCP connections to ``port`` (the gateway's side) held open by ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name or not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        total += float(value)
    return total


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _streams(root: str, key: str, n: int, body: dict) -> list[tuple[int, str]]:
    """``n`` streams at once, each read to its end: (status, whole body)."""
    async with httpx2.AsyncClient(timeout=120) as http:
        async def one():
            async with http.stream("POST", root + "/v1/chat/completions", json={**body, "stream": True},
                                   headers={"Authorization": f"Bearer {key}"}) as response:
                return response.status_code, (await response.aread()).decode()
        return await asyncio.gather(*[one() for _ in range(n)])


async def test_two_workers_share_the_port_the_caps_the_ledger_and_the_metrics_and_a_dead_one_comes_back(
        triton, tmp_path, redis_server):
    stack = Stack(triton, tmp_path, ELECTRON_REDIS_URL=redis_server.url, ELECTRON_GATEWAY_WORKERS="2")
    try:
        admin = create_key(stack.env, "acme", "admin", admin=True)
        cli(stack.env, "electron-keys", "limits", "--account", "acme", "--concurrency", "50", "--rpm", "100000")
        capped = create_key(stack.env, "capped", "k")
        cli(stack.env, "electron-keys", "limits", "--account", "capped", "--concurrency", "3", "--rpm", "100000")
        root = stack.start()
        server = stack.servers[0]
        port = int(root.rsplit(":", 1)[1])
        workers = wait_for(lambda: len(worker_pids(server.process.pid)) == 2 and worker_pids(server.process.pid),
                           60, "two workers")

        # 32 connections opened together and kept alive: both workers hold some of them
        clients = [httpx2.Client(base_url=root, timeout=30) for _ in range(32)]
        threads = [threading.Thread(target=client.get, args=("/v1/models",),
                                    kwargs={"headers": {"Authorization": f"Bearer {admin}"}}) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        per_worker = {pid: established_connections(pid, port) for pid in workers}
        assert sum(per_worker.values()) == 32 and all(n >= 4 for n in per_worker.values()), per_worker
        for client in clients:
            client.close()

        # a concurrency cap of 3 holds across both workers: a burst of 12 admits exactly 3
        burst = await _streams(root, capped, 12, {**LONG, "max_tokens": 40, "min_tokens": 40})
        sent = 12
        assert [status for status, _ in burst].count(200) == 3
        assert [status for status, _ in burst].count(429) == 9
        assert all(body.rstrip().endswith("data: [DONE]") for status, body in burst if status == 200)

        # every row so far written (a worker killed outright loses the rows it has not flushed yet)
        for _ in range(100):
            if len(await stack.rows()) == sent - 9:
                break
            await asyncio.sleep(0.1)
        assert len(await stack.rows()) == sent - 9

        # a worker killed outright is started again; the port serves all along
        os.kill(workers[0], signal.SIGKILL)
        client = sdk(root, admin)
        answers = [client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4) for _ in range(6)]
        sent += 6
        assert all(a.usage.completion_tokens == 4 for a in answers)
        restarted = wait_for(lambda: (pids := worker_pids(server.process.pid)) and len(pids) == 2
                             and workers[0] not in pids and pids, 30, "the killed worker started again")
        assert workers[1] in restarted

        # the metrics any worker renders are the pool's sums: ten requests, each on a connection of its
        # own (so spread over both workers), add exactly ten to what every scrape shows, wherever it lands
        def settled():
            text = httpx2.get(root + "/metrics").text
            return metric(text, "electron_requests_in_flight") == 0 and text

        route = {"route": "/v1/chat/completions", "status_code": "200"}
        before = wait_for(settled, 10, "in flight at 0")
        more = [httpx2.post(root + "/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 3},
                            headers={"Authorization": f"Bearer {admin}"}, timeout=60) for _ in range(10)]
        sent += 10
        assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3 for r in more)
        time.sleep(2 * LIVE_REFRESH_S)
        for _ in range(6):
            after = wait_for(settled, 10, "in flight back to 0")
            assert metric(after, "electron_requests_total", **route) - metric(
                before, "electron_requests_total", **route) == 10
            assert metric(after, "electron_completion_tokens_total") - metric(
                before, "electron_completion_tokens_total") == 30

        # SIGTERM: both workers drain their streams, then all exit 0
        finishing = asyncio.get_running_loop().run_in_executor(
            None, lambda: asyncio.run(_streams(root, admin, 4, {**LONG, "max_tokens": 60, "min_tokens": 60})))
        await asyncio.sleep(1.5)
        current = worker_pids(server.process.pid)
        server.process.send_signal(signal.SIGTERM)
        drained = await finishing
        sent += 4
        assert [status for status, _ in drained] == [200] * 4
        assert all('"finish_reason":"length"' in body and body.rstrip().endswith("data: [DONE]")
                   for _, body in drained)
        assert server.process.wait(60) == 0
        assert not any(Path(f"/proc/{pid}").exists() and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       for pid in current)

        # one usage row per admitted request, whichever worker served it
        rows = await stack.rows()
        admitted = sent - 9
        assert len(rows) == admitted, (len(rows), admitted)
    finally:
        stack.stop()


def test_several_workers_refuse_to_start_without_redis(tmp_path):
    refused = serve_once({"ELECTRON_DATA_DIR": str(tmp_path / "data"), "ELECTRON_GATEWAY_WORKERS": "2"})
    assert refused.returncode == 2
    assert "ELECTRON_GATEWAY_WORKERS=2 needs ELECTRON_REDIS_URL" in refused.stderr
