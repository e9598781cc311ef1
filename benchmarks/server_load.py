"""The REST server under use: click round trip on a 512x512x300 CT, then N clients clicking at once.

    python benchmarks/server_load.py                         # latency, then 20 clients for 5 minutes
    python benchmarks/server_load.py --clients 4 --minutes 1 # a short run

Starts ``fastsam3d serve`` (the bundled default model) in its own process on loopback with a
synthetic CT (int16 noise around soft tissue with a brighter ellipsoid, 0.8x0.8x1.5 mm) in its
data folder. Latency: one session, a first click (encoder), then ``--clicks`` clicks near it (the
cached embedding); each round trip is timed in the client around the HTTP call, answer decoded.
Load: ``--clients`` threads, each with its own session on the same file, clicking for
``--minutes``; the server's RSS is sampled every 15 s while every session is open (growth beyond
the sessions' caches would show up there; flatness over the last 2 minutes is printed), and once
all sessions have closed, against its level with one session open; ``/api/health`` is timed once a
second throughout; every non-200 answer counts as an error.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model", default="default", help="the server's --model (a name or a checkpoint file)")
    args = parser.parse_args()
    import httpx

    shape = tuple(int(v) for v in args.shape.split(","))
    folder = Path(tempfile.mkdtemp(prefix="fastsam3d-load-"))
    centre = make_ct(folder / "ct.nii.gz", shape)
    command = [
        sys.executable,
        "-m",
        "fastsam3d.cli",
        "serve",
        "--data",
        str(folder),
        "--port",
        str(args.port),
        "--max-sessions",
        str(args.clients + 2),
        "--model",
        args.model,
    ]
    server = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    base = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            for _ in range(600):
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            print(f"server up; RSS {rss_mb(server.pid):.0f} MB; volume {'x'.join(map(str, shape))}")
            session = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
            started = time.perf_counter()
            first = client.post(f"/api/sessions/{session}/clicks", json={"points": [list(centre)]}).json()
            print(
                f"first click: {1e3 * (time.perf_counter() - started):.0f} ms round trip "
                f"(encoder {first['timings_ms']['encoder']:.0f} ms)"
            )
            rng = random.Random(0)
            times, servers, sizes = [], [], []
            for _ in range(args.clicks):
                point = [c + rng.randint(-10, 10) for c in centre]
                started = time.perf_counter()
                response = client.post(
                    f"/api/sessions/{session}/clicks", json={"points": [point], "positive": rng.random() < 0.7}
                )
                answer = response.json()
                times.append(1e3 * (time.perf_counter() - started))
                servers.append(answer["timings_ms"]["server"])
                sizes.append(len(answer["region"]["data"]) if answer["region"] else 0)
            times.sort()
            if times:
                print(
                    f"click with cached embedding, {args.clicks} clicks: round trip median {statistics.median(times):.1f} ms, "
                    f"p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms; server median {statistics.median(servers):.1f} ms; "
                    f"answer median {statistics.median(sizes) / 1024:.0f} kB"
                )
            one_session = rss_mb(server.pid)
            print(f"server RSS with one session open: {one_session:.0f} MB")
            client.delete(f"/api/sessions/{session}")
        if args.clients <= 0:
            return
        results = {"clicks": 0, "errors": collections.Counter(), "times": [], "examples": {}}
        lock = threading.Lock()
        opened = threading.Barrier(args.clients + 1)
        stop = time.monotonic() + 60 * args.minutes + 600  # refined once all sessions are open

        def client_loop(index: int) -> None:
            rng = random.Random(index)
            with httpx.Client(base_url=base, timeout=600) as client:
                session = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
                opened.wait()
                while time.monotonic() < stop:
                    point = [c + rng.randint(-40, 40) for c in centre]
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
                        results["times"].append(elapsed)
                client.delete(f"/api/sessions/{session}")

        health = []  # /api/health round trips (ms) while the clients work

        def health_loop() -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    client.get("/api/health")
                    health.append(1e3 * (time.perf_counter() - started))
                    time.sleep(1.0)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=health_loop))
        for thread in threads:
            thread.start()
        opened.wait()
        stop = time.monotonic() + 60 * args.minutes
        time.sleep(min(30.0, 60 * args.minutes / 4))  # every ROI encoded once: the caches are full
        samples = []  # server RSS while all sessions are open, every 15 s until the clients stop
        while time.monotonic() < stop - 5:
            samples.append(rss_mb(server.pid))
            time.sleep(min(15.0, max(stop - 5 - time.monotonic(), 0.1)))
        samples.append(rss_mb(server.pid))
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(100):  # closed sessions are released in the background
                if client.get("/api/health").json()["sessions"] == 0:
                    break
                time.sleep(0.1)
        time.sleep(2.0)
        closed = rss_mb(server.pid)
        times = sorted(results["times"])
        print(
            f"load: {args.clients} clients x {args.minutes:g} min: {results['clicks']} requests, {sum(results['errors'].values())} errors, "
            f"median {statistics.median(times):.0f} ms, p95 {times[int(0.95 * (len(times) - 1))]:.0f} ms, "
            f"{results['clicks'] / (60 * args.minutes):.1f} requests/s"
        )
        for status, count in results["errors"].most_common():
            print(f"  {count} x {status}, e.g. {results['examples'][status]}")
        last = samples[-9:]  # the last 2 minutes
        health.sort()
        print(
            f"server RSS with all sessions open: {samples[0]:.0f} MB after warm-up, max {max(samples):.0f} MB, "
            f"{samples[-1]:.0f} MB just before the end; last 2 min within {100 * (max(last) / min(last) - 1):.1f} %"
        )
        print(
            f"server RSS after all sessions closed: {closed:.0f} MB ({100 * (closed / one_session - 1):+.0f} % "
            f"against one session open, {one_session:.0f} MB)"
        )
        print(
            f"/api/health under load: median {statistics.median(health):.0f} ms, max {health[-1]:.0f} ms ({len(health)} calls)"
        )
        print("RSS samples (MB, every 15 s): " + " ".join(f"{v:.0f}" for v in samples))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
