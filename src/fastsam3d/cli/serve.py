"""``fastsam3d serve``: the REST server with the web viewer."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import FastSAM3DError
from .arguments import add_model_arguments

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="REST server with the web viewer",
        description="Serves the API (OpenAPI docs at /docs) and the viewer at /. Binds to localhost unless --host is given.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind; other than loopback needs --api-key (or --insecure)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--data", type=Path, help="folder whose volumes clients may open (nothing outside it is readable)"
    )
    parser.add_argument("--api-key", help="require this key in the X-API-Key header (default: $FASTSAM3D_API_KEY)")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    parser.add_argument(
        "--allowed-hosts",
        default="",
        help="comma-separated Host header names accepted besides localhost, 127.0.0.1, ::1 and --host ('*': any)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=64,
        help="sessions open at once (default 64); with a state folder the least recently used idle one "
        "is closed, and saved, to make room",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=2048.0,
        help="cached image features of all sessions together in MB (LRU: idle sessions' go first; default 2048)",
    )
    parser.add_argument("--max-upload-mb", type=float, default=2048.0, help="volume and mask uploads")
    parser.add_argument(
        "--max-unpacked-mb", type=float, default=2048.0, help="decoded image size, and unzipped DICOM size"
    )
    parser.add_argument(
        "--max-voxels", type=int, default=2**28, help="voxels of an opened image (checked from its header)"
    )
    parser.add_argument("--max-zip-entries", type=int, default=5000, help="files in an uploaded DICOM zip")
    parser.add_argument("--max-points", type=int, default=100, help="points in one click request")
    parser.add_argument(
        "--request-seconds", type=float, default=120.0, help="deadline of one request (waiting and working)"
    )
    parser.add_argument(
        "--parallel-jobs",
        type=int,
        help="session jobs (clicks, encoder passes) run at once, the rest wait in order; each already uses "
        "every core, so more only adds memory (default: the number of cores, at least 4)",
    )
    parser.add_argument("--idle-minutes", type=float, default=30.0, help="close sessions idle this long")
    parser.add_argument(
        "--temp-dir",
        type=Path,
        help="temporary root (default: <system temp>/fastsam3d-server): uploads and each session's "
        "memory-mapped voxels, so keep it on a disk, not tmpfs; folders of dead servers under it are removed at start",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="folder where sessions are saved after every change and reopened from after a restart "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-state", action="store_true", help="save no sessions: they end with the server")
    parser.add_argument(
        "--keep-days", type=float, default=14.0, help="delete saved sessions unchanged this long (default 14)"
    )
    parser.add_argument(
        "--sync-saves",
        action="store_true",
        help="answer each change only once its session is saved (nothing answered is lost on a crash; slower clicks)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level; 'info' and 'debug' include the access log (default info)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def default_state_dir() -> Path:
    """Where sessions are saved unless --state-dir says: the user's data folder."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fastsam3d" / "sessions"


def run(args: argparse.Namespace) -> None:
    import os

    from ..extras import require_extra

    require_extra("server", "fastapi", "uvicorn", "multipart", feature="fastsam3d serve")
    import uvicorn

    from ..server.app import create_app
    from ..server.settings import LOOPBACK_HOSTS, ServerSettings, check_binding, is_loopback

    if args.data is not None and not args.data.is_dir():
        raise FastSAM3DError(f"--data {args.data} is not a folder")
    api_key = args.api_key or os.environ.get("FASTSAM3D_API_KEY")
    check_binding(args.host, api_key, args.insecure)
    extra_hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    settings = ServerSettings(
        data_dir=args.data,
        model=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
        api_key=api_key,
        allowed_hosts=(*LOOPBACK_HOSTS, args.host, *extra_hosts),
        max_sessions=args.max_sessions,
        **({} if args.parallel_jobs is None else {"parallel_jobs": max(1, args.parallel_jobs)}),
        cache_mb=args.cache_mb,
        max_upload_mb=args.max_upload_mb,
        max_unpacked_mb=args.max_unpacked_mb,
        max_voxels=args.max_voxels,
        max_zip_entries=args.max_zip_entries,
        max_points=args.max_points,
        request_seconds=args.request_seconds,
        idle_seconds=60 * args.idle_minutes,
        temp_dir=args.temp_dir,
        precision=args.precision,
        state_dir=None if args.no_state else args.state_dir,
        keep_days=args.keep_days,
        sync_saves=args.sync_saves,
    )
    app = create_app(settings)
    if app.state.store.temp.stale_removed:
        log.info(
            f"removed the temporary folders of {app.state.store.temp.stale_removed} server(s) that stopped uncleanly"
        )
    if not is_loopback(args.host) and not api_key:
        log.warning(f"serving on {args.host} without an API key (--insecure)")
    log.info(f"fastsam3d viewer: http://{args.host}:{args.port}/  (API docs: /docs)")
    level = "warning" if args.quiet else args.log_level
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=level,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=3,
    )
