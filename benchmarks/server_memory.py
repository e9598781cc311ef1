"""The REST server's memory with many sessions open: N sessions on a 512x512x200 CT, K clicks each.

    python benchmarks/server_memory.py                       # 10 then 20 sessions, 5 clicks each
    python benchmarks/server_memory.py --sessions 10 --no-state

Starts ``fastsam3d serve`` (the bundled default model) on loopback with the synthetic CT of
``server_load.py``, opens sessions one after another, makes ``--clicks`` clicks in each (near the
bright ellipsoid, 70 % include), keeps them all open and prints the server's resident memory at each
checkpoint: VmRSS, and its anonymous (heap) and file-backed parts (file pages: the model's weights
and the mapped voxels a session's ROIs touched; the system can drop and re-read those), with the
feature cache's size from ``/api/health``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server_load import make_ct, wait_until_up


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="512,512,200")
    parser.add_argument("--sessions", default="10,20", help="checkpoints: open sessions to report at")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per session")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--no-state", action="store_true", help="serve without a state folder")
    args = parser.parse_args()
    import httpx

    shape = tuple(int(v) for v in args.shape.split(","))
    checkpoints = sorted(int(n) for n in args.sessions.split(","))
    folder = Path(tempfile.mkdtemp(prefix="fastsam3d-memory-"))
    (folder / "data").mkdir()
    centre = make_ct(folder / "data" / "ct.nii.gz", shape)
    command = [sys.executable, "-m", "fastsam3d.cli", "serve", "--data", str(folder / "data"), "--port", str(args.port)]
    command += ["--max-sessions", str(checkpoints[-1] + 1), "--temp-dir", str(folder / "temp")]
    command += ["--no-state"] if args.no_state else ["--state-dir", str(folder / "state")]
    server = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    try:
        wait_until_up(f"http://127.0.0.1:{args.port}")
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as client:
            print(f"volume {'x'.join(map(str, shape))}, {args.clicks} clicks per session, state {not args.no_state}")
            report(client, server.pid, "server up, no session")
            rng = random.Random(0)
            for opened in range(1, checkpoints[-1] + 1):
                session = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
                for _ in range(args.clicks):
                    point = [c + rng.randint(-10, 10) for c in centre]
                    answer = client.post(
                        f"/api/sessions/{session}/clicks", json={"points": [point], "positive": rng.random() < 0.7}
                    )
                    answer.raise_for_status()
                if opened in checkpoints:
                    report(client, server.pid, f"{opened} sessions open")
    finally:
        server.terminate()
        server.wait(30)


def report(client, pid: int, label: str) -> None:
    time.sleep(1.0)  # saves and releases in the background settle
    memory = memory_mb(pid)
    cache = client.get("/api/health").json().get("feature_cache_mb", float("nan"))
    print(
        f"{label}: RSS {memory['VmRSS']:.0f} MB (heap {memory['RssAnon']:.0f}, files {memory['RssFile']:.0f}, "
        f"shared {memory.get('RssShmem', 0):.0f}); feature cache {cache:.0f} MB"
    )


if __name__ == "__main__":
    main()
