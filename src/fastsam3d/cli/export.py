"""``fastsam3d export MODEL --format onnx --out FILE [--precision fp32|int8]``: the image encoder as ONNX."""

from __future__ import annotations

import argparse
import logging

from ..configs import EXPORT_PRECISIONS

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model's image encoder as an ONNX file (ONNX Runtime, OpenVINO)",
        description="Write the part of MODEL that runs once per ROI (a 3D SAM's image encoder, the default model's "
        "U-Net) as ONNX, for ONNX Runtime or OpenVINO. `--precision onnx-fp32|onnx-int8|openvino-fp32` (or auto) "
        "does this by itself on "
        "first use, into ~/.cache/fastsam3d/onnx; this command writes a file of your choice. Needs "
        "pip install 'fastsam3d[fast]'.",
    )
    parser.add_argument("model", metavar="MODEL", help="model name (see `fastsam3d models`) or checkpoint file")
    parser.add_argument("--checkpoint", help="weights for a named model, e.g. FastSAM3D.pth")
    parser.add_argument("--decoder-checkpoint", help="prompt encoder + decoder for an encoder-only student checkpoint")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="file format (default: onnx)")
    parser.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        default="fp32",
        help="fp32 (same results as torch) or int8 (dynamically quantised products)",
    )
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..registry import load_model
    from ..runtime import export_encoder

    model = load_model(args.model, args.checkpoint, args.decoder_checkpoint)
    path = export_encoder(model, args.out, args.precision)
    log.info(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.precision})")
