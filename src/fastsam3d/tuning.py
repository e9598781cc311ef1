"""``auto`` by measurement: on a CPU, which precision gives a model the fastest first click on this
machine, measured once and remembered.

Which precisions a kind of model may use is what passed the accuracy gate on real volumes
(docs/benchmarks.md "Precision"): :func:`candidates`. Which of them is fastest depends on the CPU
(AVX2 or AVX-512 VNNI, its cores) and on the runtimes' versions, not on the instruction set alone:
the student's encoder gained 2.5x from int8 on a Zen 4 and 1.5x on a Zen 2 with AVX2, and
OpenVINO ran the ``default`` U-Net 1.6x faster than torch where ONNX Runtime was not faster at all.

:func:`measured_precision` times each candidate's first click (a box on a synthetic ball,
:func:`~fastsam3d.engine.interface.probe_session`: crop, encoder, decoder, paste) in interleaved
rounds after one untimed call, drops a candidate whose mask differs from fp32's (Dice below
``GATE_DICE``) or that cannot run, and keeps the fastest median. The choice and its figures are
stored in ``$FASTSAM3D_CACHE/precision.json`` under a key over the CPU, the thread count and the
runtimes' versions, and the model's architecture (not its weights): the first load of a model on a
machine pays a few seconds to some tens (ONNX exports), later loads read the file.
``fastsam3d precision MODEL --measure`` measures again; ``FASTSAM3D_AUTO_PRECISION=rule`` skips
measuring (the rule in :func:`~fastsam3d.runtime.rule_precision` decides, as on a GPU).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import itertools
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .clicks import dice
from .errors import PromptError
from .io import atomic_output

log = logging.getLogger(__name__)

GATE_DICE = 0.98  # a candidate's mask on the probe against fp32's, at least
ROUNDS = 3  # timed first clicks per candidate, interleaved
FILE_NAME = "precision.json"
ENVIRONMENT = "FASTSAM3D_AUTO_PRECISION"  # "rule": do not measure
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
RUNTIMES = ("torch", "onnxruntime", "openvino")
_LOCK = threading.Lock()


@dataclass
class Measurement:
    """What was measured for one model architecture on one machine."""

    precision: str  # the choice
    model: str  # the config's name, for people reading the file
    first_click_ms: dict[str, float]  # median per candidate that passed
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was dropped
    measured: str = ""  # ISO date and time

    def reason(self) -> str:
        """One line: what was chosen against what."""
        others = ", ".join(f"{p} {ms:.0f} ms" for p, ms in self.first_click_ms.items() if p != self.precision)
        dropped = "".join(f"; {p} dropped: {why}" for p, why in self.rejected.items())
        return (
            f"{self.precision} for {self.model}: first click {self.first_click_ms[self.precision]:.0f} ms"
            f"{f' (against {others})' if others else ''}, measured on this machine {self.measured[:16]}{dropped}"
        )


def candidates(model: nn.Module, device: str | torch.device) -> tuple[str, ...]:
    """The precisions that passed the accuracy gate for this kind of model and can run here, fp32
    first; empty off the CPU and for models measured nowhere (the rule decides there).

    - the 3D SAMs with a wide ViT (the official student and teacher): fp32, torch's int8, and the
      encoder in ONNX Runtime or OpenVINO in fp32 (ONNX Runtime's int8 failed the gate on the
      teacher, so it stays opt-in);
    - ``ClickUNet3D`` (``default``): fp32 and the exported U-Net in fp32 (int8 failed its gate);
    - LiteMedSAM's TinyViT: fp32 and the exported encoder in fp32 (int8 failed its gate).
    """
    from .modeling.click_unet import ClickUNet3D
    from .modeling.sam2d import Sam2D
    from .modeling.sam3d import Sam3D
    from .runtime import int8_pays, onnx_runtime_available, openvino_available

    if torch.device(device).type != "cpu" or getattr(model, "config", None) is None:
        return ()
    exported = ["onnx-fp32"] if onnx_runtime_available() else []
    if exported and openvino_available():
        exported.append("openvino-fp32")
    if isinstance(model, Sam2D):
        return ("fp32", *exported) if model.config.encoder == "tiny-vit" else ()
    if isinstance(model, ClickUNet3D):
        return ("fp32", *exported)
    if isinstance(model, Sam3D):
        return ("fp32", *(["int8"] if int8_pays(model) else []), *exported)
    return ()


def measuring_enabled() -> bool:
    """False when ``FASTSAM3D_AUTO_PRECISION=rule``."""
    return os.environ.get(ENVIRONMENT, "measure").strip().lower() != "rule"


def measured_precision(model: nn.Module, device: str | torch.device = "cpu", again: bool = False) -> Measurement | None:
    """The remembered measurement for this model's architecture on this machine, else (or with
    ``again``) a new one, stored; None where fewer than two precisions are candidates or measuring
    is switched off. ``model`` must be in fp32; it is left as it is (the candidates run on copies)."""
    options = candidates(model, device)
    if len(options) < 2 or not (measuring_enabled() or again):
        return None
    machine = machine_description()
    architecture = architecture_key(model)
    with _LOCK:
        found = None if again else remembered(machine).get(architecture)
        if found is not None and found.precision in options:
            return found
        log.info(
            f"measuring which precision gives {model.config.name} the fastest first click on this machine "
            f"({', '.join(options)}), once: a few seconds, some tens for a first ONNX export"
        )
        try:
            found = measure(model, options, device)
        except Exception as error:  # noqa: BLE001 - measuring must never stop a model from loading
            log.warning(f"could not measure the precisions of {model.config.name} ({error}): auto follows its rule")
            return None
        _store(machine, architecture, found)
    log.info(f"precision auto: {found.reason()}")
    return found


def measure(model: nn.Module, options: tuple[str, ...], device: str | torch.device = "cpu") -> Measurement:
    """Time each precision in ``options`` (fp32 first: ``model`` itself, the others on copies): see
    the module docstring. Raises RuntimeError when fp32 itself cannot run the probe."""
    from .runtime import apply_model_precision

    ready: dict[str, nn.Module] = {}
    rejected: dict[str, str] = {}
    reference: np.ndarray | None = None
    for precision in options:
        candidate = model if precision == "fp32" else _sharing_copy(model)  # fp32: the model itself, unchanged
        try:
            apply_model_precision(candidate, precision, device)
            mask = _first_click(candidate, device)  # also the untimed first call
        except Exception as error:  # any failure of a runtime drops that runtime, not the load
            if precision == "fp32":
                raise RuntimeError(f"fp32 cannot run the probe: {type(error).__name__}: {error}") from error
            rejected[precision] = f"{type(error).__name__}: {str(error).strip()[:200]}"
            continue
        if precision == "fp32":
            reference = mask
        elif (agreement := _agreement(mask, reference)) < GATE_DICE:
            rejected[precision] = f"mask Dice {agreement:.3f} against fp32 on the probe"
            continue
        ready[precision] = candidate
    seconds: dict[str, list[float]] = {precision: [] for precision in ready}
    for _ in range(ROUNDS):
        for precision, candidate in ready.items():
            started = time.perf_counter()
            _first_click(candidate, device)
            seconds[precision].append(time.perf_counter() - started)
    medians = {precision: 1e3 * statistics.median(times) for precision, times in seconds.items()}
    return Measurement(
        precision=min(medians, key=medians.get),
        model=model.config.name,
        first_click_ms={precision: round(ms, 1) for precision, ms in medians.items()},
        rejected=rejected,
        measured=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its parameters and buffers. The candidates' precisions
    replace layers (int8) or the encoder (an exported file) and change no weight in place, so a
    candidate holds no second copy of the fp32 weights (the teacher's first measurement peaked at
    2.6 GB with whole copies)."""
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared)


def _first_click(model: nn.Module, device: str | torch.device) -> np.ndarray | None:
    """The probe's mask (:func:`~fastsam3d.engine.interface.probe_session`); None when the model finds
    nothing there (an untrained model: the work was done all the same)."""
    from .engine.interface import probe_session

    try:
        return probe_session(model, device).label_map() > 0
    except PromptError:
        return None


def _agreement(mask: np.ndarray | None, reference: np.ndarray | None) -> float:
    """Dice of two probe masks; None is an empty mask."""
    if mask is not None and reference is not None:
        return dice(mask, reference)
    given = mask if mask is not None else reference
    return 0.0 if given is not None and given.any() else 1.0


def remembered(machine: dict | None = None) -> dict[str, Measurement]:
    """The stored measurements of this machine (or of the :func:`machine_description` given), by
    :func:`architecture_key` (unreadable entries left out)."""
    found = {}
    for architecture, stored in _read().get(_digest(machine or machine_description()), {}).get("models", {}).items():
        try:
            found[architecture] = Measurement(**stored)
        except TypeError:
            continue
    return found


def machine_description() -> dict:
    """What the speed of a precision depends on here: the CPU, its vector instructions, torch's
    thread count and the runtimes' versions."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    flags = set(text.split())
    versions = {}
    for runtime in RUNTIMES:
        try:
            versions[runtime] = importlib.metadata.version(runtime)
        except importlib.metadata.PackageNotFoundError:
            versions[runtime] = None
    return {
        "cpu": names[0] if names else os.uname().machine,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "threads": torch.get_num_threads(),
        **versions,
    }


def machine_key() -> str:
    return _digest(machine_description())


def architecture_key(model: nn.Module) -> str:
    """The model's class and config (what it computes), not its weights."""
    return f"{model.config.name}-{_digest([type(model).__name__, model.config.to_json()])}"


def tuning_file() -> Path:
    from .runtime import cache_root

    return cache_root() / FILE_NAME


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _read() -> dict:
    path = tuning_file()
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning(f"ignoring {path} ({error}): measuring again")
        return {}
    return content if isinstance(content, dict) else {}


def _store(machine: dict, architecture: str, found: Measurement) -> None:
    content = _read()
    entry = content.setdefault(_digest(machine), {"machine": machine, "models": {}})
    entry.setdefault("models", {})[architecture] = asdict(found)
    try:
        with atomic_output(tuning_file()) as temp:
            temp.write_text(json.dumps(content, indent=1))
    except OSError as error:
        log.warning(f"could not remember the measured precision in {tuning_file()} ({error}): measured again next time")
