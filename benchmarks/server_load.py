"""The REST server under use: click round trip on a 512x512x300 CT, then N clients clicking at once.

    python benchmarks/server_load.py                         # latency, then 20 clients for 5 minutes
    python benchmarks/server_load.py --clients 4 --minutes 1 # a short run
    python benchmarks/server_load.py --replicas 2 --sync-saves  # two servers on one state folder

Starts ``fastsam3d serve`` (the bundled default model) in its own process on loopback with a
synthetic CT (int16 noise around soft tissue with a brighter ellipsoid, 0.8x0.8x1.5 mm) in its
data folder. Latency: one session, a first click (encoder), then ``--clicks`` clicks near it (the
cached embedding); each round trip is timed in the client around the HTTP call, answer decoded.
Load: ``--clients`` threads, each with its own session on the same file, clicking for
``--minutes``; the server's RSS is sampled every 15 s while every session is open (growth beyond
the sessions' caches would show up there; flatness over the last 2 minutes is printed), and once
all sessions have closed, against its level with one session open; ``/api/health`` is timed once a
second throughout; every non-200 answer counts as an error.

Sessions are saved in a state folder of the run (``--no-state``: none). ``--replicas N`` starts N
servers on that folder (ports ``--port`` + 0 .. N-1, as in docs/deployment.md) and client i keeps
to replica i % N, as a sticky proxy would; latency, load and RSS are printed for each replica.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def make_ct(path: Path, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    from fastsam3d.io import Volume, write_volume

    rng = np.random.default_rng(0)
    array = np.empty(shape, dtype=np.int16)
    centre = np.array(shape) // 2
    i = np.arange(shape[0])[:, None]
    j = np.arange(shape[1])[None, :]
    for k in range(shape[2]):  # slab by slab: no full-size float temporaries
        inside = ((i - centre[0]) / 60.0) ** 2 + ((j - centre[1]) / 50.0) ** 2 + ((k - centre[2]) / 30.0) ** 2 <= 1
        array[:, :, k] = np.where(inside, 140, 40) + rng.normal(0, 15, shape[:2])
    write_volume(Volume(array, np.array([0.8, 0.8, 1.5]), np.zeros(3), np.eye(3)), path)
    return tuple(int(c) for c in centre)


def start_server(args: argparse.Namespace, folder: Path, port: int) -> subprocess.Popen:
    """``fastsam3d serve`` on ``folder``/data (and ``folder``/state unless --no-state) at ``port``."""
    command = [sys.executable, "-m", "fastsam3d.cli", "serve", "--data", str(folder / "data"), "--port", str(port)]
    command += ["--max-sessions", str(args.clients + 2), "--model", args.model]
    command += ["--state-dir", str(folder / "state")] if args.state else ["--no-state"]
    command += ["--sync-saves"] if args.sync_saves else []
    return subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))


def wait_until_up(base: str) -> None:
    """Wait (up to about 2 minutes) until the server at ``base`` answers ``/api/health``."""
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{base}/api/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@dataclass
class Replica:
    """One server process; ``name`` starts its printed lines (empty for a single server)."""

    name: str
    port: int
    process: subprocess.Popen
    one_session: float = float("nan")  # RSS (MB) with one session open
    times: list[float] = field(default_factory=list)  # round trips (ms) of its clients under load
    samples: list[float] = field(default_factory=list)  # RSS (MB) under load

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> float:
        return rss_mb(self.process.pid)


def percentiles(times: list[float]) -> tuple[float, float]:
    """Median and 95th percentile."""
    times = sorted(times)
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def latency(replica: Replica, centre: tuple[int, int, int], clicks: int) -> float:
    """One session: a first click (encoder), then ``clicks`` near it; returns the RSS with it open."""
    import httpx

    name = replica.name
    with httpx.Client(base_url=replica.base, timeout=600) as client:
        session = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
        started = time.perf_counter()
        first = client.post(f"/api/sessions/{session}/clicks", json={"points": [list(centre)]}).json()
        print(
            f"{name}first click: {1e3 * (time.perf_counter() - started):.0f} ms round trip "
            f"(encoder {first['timings_ms']['encoder']:.0f} ms)"
        )
        rng = random.Random(0)
        times, servers, sizes, stages = [], [], [], collections.defaultdict(list)
        for _ in range(clicks):
            point = [c + rng.randint(-10, 10) for c in centre]
            started = time.perf_counter()
            response = client.post(
                f"/api/sessions/{session}/clicks", json={"points": [point], "positive": rng.random() < 0.7}
            )
            answer = response.json()
            times.append(1e3 * (time.perf_counter() - started))
            servers.append(answer["timings_ms"]["server"])
            for stage, value in answer["timings_ms"].items():
                stages[stage].append(value)
            sizes.append(len(answer["region"]["data"]) if answer["region"] else 0)
        if times:
            median, p95 = percentiles(times)
            print(
                f"{name}click with cached embedding, {clicks} clicks: round trip median {median:.1f} ms, "
                f"p95 {p95:.1f} ms; server median {statistics.median(servers):.1f} ms; "
                f"answer median {statistics.median(sizes) / 1024:.0f} kB"
            )
            print(
                f"{name}  by stage, median ms: "
                + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stages.items())
            )
        saves = client.get("/api/health").json().get("saves")
        if saves:
            print(f"{name}records written: {saves['written']}, {saves['mean_ms']} ms each on average")
        one_session = replica.rss()
        print(f"{name}server RSS with one session open: {one_session:.0f} MB")
        client.delete(f"/api/sessions/{session}")
    return one_session


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="512,512,300")
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks with a cached embedding")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8765, help="the first replica's port (the next ones follow)")
    parser.add_argument("--model", default="default", help="the server's --model (a name or a checkpoint file)")
    parser.add_argument(
        "--replicas", type=int, default=1, help="servers on one state folder (client i: replica i %% N)"
    )
    parser.add_argument(
        "--state", action=argparse.BooleanOptionalAction, default=True, help="save sessions (in the run's folder)"
    )
    parser.add_argument("--sync-saves", action="store_true", help="the servers' --sync-saves")
    args = parser.parse_args()
    if args.replicas > 1 and not args.state:
        parser.error("replicas share a state folder: drop --no-state")
    import httpx

    shape = tuple(int(v) for v in args.shape.split(","))
    folder = Path(tempfile.mkdtemp(prefix="fastsam3d-load-"))
    (folder / "data").mkdir()
    centre = make_ct(folder / "data" / "ct.nii.gz", shape)
    replicas = [
        Replica(f"replica {r} (port {port}): " if args.replicas > 1 else "", port, start_server(args, folder, port))
        for r, port in enumerate(range(args.port, args.port + args.replicas))
    ]
    try:
        for replica in replicas:
            wait_until_up(replica.base)
            print(f"{replica.name}server up; RSS {replica.rss():.0f} MB; volume {'x'.join(map(str, shape))}")
        saving = ("sync saves" if args.sync_saves else "saves") if args.state else "no state folder"
        print(f"{args.replicas} server(s), {saving}")
        for replica in replicas:
            replica.one_session = latency(replica, centre, args.clicks)
        if args.clients <= 0:
            return
        results = {"clicks": 0, "errors": collections.Counter(), "examples": {}}
        lock = threading.Lock()
        opened = threading.Barrier(args.clients + 1)
        stop = time.monotonic() + 60 * args.minutes + 600  # refined once all sessions are open

        def client_loop(index: int) -> None:
            rng = random.Random(index)
            replica = replicas[index % len(replicas)]  # sticky: every request of the session to one replica
            with httpx.Client(base_url=replica.base, timeout=600) as client:
                session = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
                opened.wait()
                while time.monotonic() < stop:
                    point = [min(max(c + rng.randint(-40, 40), 0), n - 1) for c, n in zip(centre, shape, strict=True)]
                    started = time.perf_counter()
                    if rng.random() < 0.1:
                        response = client.post(f"/api/sessions/{session}/undo", json={})
                    else:
                        response = client.post(
                            f"/api/sessions/{session}/clicks", json={"points": [point], "positive": rng.random() < 0.7}
                        )
                    elapsed = 1e3 * (time.perf_counter() - started)
                    with lock:
                        results["clicks"] += 1
                        if response.status_code != 200:
                            results["errors"][response.status_code] += 1
                            results["examples"].setdefault(response.status_code, response.text[:160])
                        replica.times.append(elapsed)
                client.delete(f"/api/sessions/{session}")

        health = []  # /api/health round trips (ms) of every replica while the clients work

        def health_loop() -> None:
            while time.monotonic() < stop:
                for replica in replicas:
                    started = time.perf_counter()
                    httpx.get(f"{replica.base}/api/health", timeout=60)
                    health.append(1e3 * (time.perf_counter() - started))
                time.sleep(1.0)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=health_loop))
        for thread in threads:
            thread.start()
        opened.wait()
        stop = time.monotonic() + 60 * args.minutes
        time.sleep(min(30.0, 60 * args.minutes / 4))  # every ROI encoded once: the caches are full
        while True:  # each server's RSS while all sessions are open, every 15 s until the clients stop
            for replica in replicas:
                replica.samples.append(replica.rss())
            if time.monotonic() >= stop - 5:
                break
            time.sleep(min(15.0, max(stop - 5 - time.monotonic(), 0.1)))
        for thread in threads:
            thread.join()
        for replica in replicas:
            for _ in range(100):  # closed sessions are released in the background
                if httpx.get(f"{replica.base}/api/health").json()["sessions"] == 0:
                    break
                time.sleep(0.1)
        time.sleep(2.0)
        median, p95 = percentiles([t for replica in replicas for t in replica.times])
        print(
            f"load: {args.clients} clients x {args.minutes:g} min: {results['clicks']} requests, {sum(results['errors'].values())} errors, "
            f"median {median:.0f} ms, p95 {p95:.0f} ms, {results['clicks'] / (60 * args.minutes):.1f} requests/s"
        )
        for status, count in results["errors"].most_common():
            print(f"  {count} x {status}, e.g. {results['examples'][status]}")
        for replica in replicas:
            closed, last = replica.rss(), replica.samples[-9:]  # the last 2 minutes
            if len(replicas) > 1 and replica.times:
                median, p95 = percentiles(replica.times)
                print(f"{replica.name}{len(replica.times)} requests, median {median:.0f} ms, p95 {p95:.0f} ms")
            print(
                f"{replica.name}server RSS with all sessions open: {replica.samples[0]:.0f} MB after warm-up, "
                f"max {max(replica.samples):.0f} MB, {replica.samples[-1]:.0f} MB just before the end; "
                f"last 2 min within {100 * (max(last) / min(last) - 1):.1f} %"
            )
            print(
                f"{replica.name}server RSS after all sessions closed: {closed:.0f} MB "
                f"({100 * (closed / replica.one_session - 1):+.0f} % against one session open, {replica.one_session:.0f} MB)"
            )
        health.sort()
        print(
            f"/api/health under load: median {statistics.median(health):.0f} ms, max {health[-1]:.0f} ms ({len(health)} calls)"
        )
        for replica in replicas:
            print(f"{replica.name}RSS samples (MB, every 15 s): " + " ".join(f"{v:.0f}" for v in replica.samples))
    finally:
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:
            replica.process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
