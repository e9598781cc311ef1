"""How a model runs on this machine: the precision policy (:func:`default_precision`, what ``"auto"``
picks, and :func:`apply_model_precision`) and the image encoder exported to ONNX, cached, and run by
ONNX Runtime or OpenVINO in place of torch's.

    model = load_model("fastsam3d", precision="onnx-int8")   # exports on first use, then from the cache
    export_encoder(model, "encoder.onnx", "int8")             # an explicit file (`fastsam3d export`)
    use_onnx_encoder(model, "onnx-fp32", path="encoder.onnx") # in place, from that file

The part that runs once per ROI (a 3D SAM's ``image_encoder``; the U-Net of ``ClickUNet3D``,
:meth:`~fastsam3d.modeling.click_unet.ClickUNet3D.encode_channels`) is traced to ONNX (opset 17);
``int8`` then quantises its matrix products and convolutions dynamically (ONNX Runtime's
``quantize_dynamic``: uint8 weights, as AVX2's u8×s8 product can saturate). ``onnx-*`` runs the
file in ONNX Runtime, ``openvino-fp32`` the fp32 file in OpenVINO. The prompt encoder and mask
decoder (every click) stay in torch. On a CPU, ``auto`` measures which precision is fastest for a
model on this machine, once (:mod:`fastsam3d.tuning`). Cached files live in
``$FASTSAM3D_CACHE/onnx`` (default ``~/.cache/fastsam3d/onnx``), named by a key over the weights,
the config, the precision, the modeling code and the torch / ONNX Runtime versions; the key is
stored in the file and checked on load, so a stale or corrupt cached file is rebuilt and a
mismatched explicit file is refused; the three files of each model and precision used last are kept.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configs import CPU_ONLY_PRECISIONS, EXPORT_PRECISIONS, ONNX_PRECISIONS, PRECISIONS
from .errors import CheckpointError
from .extras import require_extra
from .io import atomic_output
from .modeling.click_unet import ClickUNet3D, ClickUNetFeatures, intensity_channels
from .modeling.precision import apply_precision, int8_available
from .modeling.sam2d import Sam2D
from .modeling.sam3d import Sam3D

log = logging.getLogger(__name__)

OPSET = 17
FORMAT = 3  # bump when the exported graph's inputs, outputs or metadata change
METADATA_KEY = "fastsam3d"
CACHED_ENCODERS_KEPT = 3  # cached files per model and precision (other checkpoints, older versions)
MODELING_DIR = Path(__file__).parent / "modeling"


def default_device() -> str:
    """The device of every session, server, training and CLI run not given one: ``"cuda"`` when a
    GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_root() -> Path:
    """``$FASTSAM3D_CACHE``, else ``~/.cache/fastsam3d``: files derived on this machine."""
    return Path(os.environ.get("FASTSAM3D_CACHE") or Path.home() / ".cache" / "fastsam3d").expanduser()


def cache_dir() -> Path:
    """Exported encoders: ``cache_root() / "onnx"``."""
    return cache_root() / "onnx"


class _ClickUNetBody(nn.Module):
    """ClickUNet3D's encoder on its intensity channels, with the features as a flat tuple (for export),
    each (B, D, H, W, C): the channels-last memory the decoder's oneDNN kernels read, so that no
    copy is made per ROI (3 ms less per click than channels-first features)."""

    def __init__(self, model: ClickUNet3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, channels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.encode_channels(channels)
        return tuple(t.permute(0, 2, 3, 4, 1) for t in (*features.shares, features.unit, features.head))


def _exported_part(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    """The module that goes to ONNX and an example input (batch of one)."""
    size = model.img_size
    if isinstance(model, Sam3D):
        return model.image_encoder, torch.zeros(1, 1, size, size, size)
    if isinstance(model, Sam2D):
        return model.image_encoder, torch.zeros(1, 3, size, size)
    if isinstance(model, ClickUNet3D):
        return _ClickUNetBody(model), torch.zeros(1, 2, size, size, size)
    raise ValueError(f"the ONNX encoder exists for SAMs and ClickUNet3D, not for {type(model).__name__}")


def encoder_key(model: nn.Module, precision: str) -> str:
    """sha256 over everything the exported file depends on: weights, config, precision, code, versions."""
    import onnxruntime

    part, _ = _exported_part(model)
    digest = hashlib.sha256()
    stamp = [FORMAT, OPSET, precision, model.config.to_json(), torch.__version__, onnxruntime.__version__]
    digest.update(json.dumps(stamp).encode())
    for source in sorted(MODELING_DIR.glob("*.py")):
        digest.update(source.read_bytes())
    for name, tensor in part.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def export_encoder(model: nn.Module, path: str | Path, precision: str = "fp32", key: str | None = None) -> Path:
    """Write the model's encoder as ONNX (``precision`` ``"fp32"`` or ``"int8"``), atomically.

    The model must be in fp32 (as :func:`~fastsam3d.registry.load_model` gives it by default).
    The file records the :func:`encoder_key` it was made from (``key``, when the caller has it).
    """
    require_extra("fast", "onnxruntime", "onnx", feature="the ONNX encoder")
    import onnx

    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"ONNX precision must be {' or '.join(EXPORT_PRECISIONS)}, not {precision!r}")
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"the model runs in {model.precision}; export it from an fp32 load")
    part, example = _exported_part(model)
    key = key or encoder_key(model, precision)
    if isinstance(model, (Sam3D, Sam2D)):
        outputs = ["embedding"]
    else:  # ClickUNetFeatures, flattened
        outputs = [*(f"share{i}" for i in range(1, len(model.config.channels))), "unit", "head"]
    with tempfile.TemporaryDirectory() as folder:
        traced = Path(folder) / "encoder.onnx"
        with torch.no_grad(), warnings.catch_warnings():  # the tracer's notes on shape-dependent Python
            warnings.simplefilter("ignore")
            torch.onnx.export(
                part.cpu().eval(),
                (example,),
                str(traced),
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=outputs,
            )
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantised = Path(folder) / "encoder-int8.onnx"
            logging.disable(logging.WARNING)  # the quantiser's advice goes to the root logger
            try:
                quantize_dynamic(traced, quantised, weight_type=QuantType.QUInt8)
            finally:
                logging.disable(logging.NOTSET)
            traced = quantised
        graph = onnx.load(str(traced))
        stamp = {"key": key, "model": model.config.name, "precision": precision, "img_size": model.img_size}
        onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(stamp)})
        with atomic_output(path) as temp:
            onnx.save(graph, str(temp))
    return Path(path)


class UnsupportedEncoder(CheckpointError):
    """A valid exported encoder that a runtime cannot run (OpenVINO and the teacher's padded windows)."""


class OnnxEncoder(nn.Module):
    """An exported encoder file run by ONNX Runtime in place of a torch encoder: (B, C, S, S, S)
    float crop (a 2D SAM: (B, 3, S, S) image) -> output(s).

    ``img_size`` is the crop edge the file was made for; the batch runs one item at a time. For a
    SAM the output is its image embedding; for ClickUNet3D, its features (B, D, H, W, C) in the
    order of :class:`~fastsam3d.modeling.click_unet.ClickUNetFeatures`. A ``key`` other than the
    one stored in the file is refused (:func:`encoder_key`).
    """

    runtime = "ONNX Runtime"

    def __init__(self, path: str | Path, img_size: int, key: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        try:
            stamp = self._open(path, threads or torch.get_num_threads())
        except Exception as error:  # noqa: BLE001 - the runtimes raise their own types for unreadable files
            unsupported = self._unsupported(error)
            if unsupported:
                raise UnsupportedEncoder(f"{self.runtime} cannot run the encoder {path}: {unsupported}") from None
            raise CheckpointError(
                f"cannot load the ONNX encoder {path} in {self.runtime}: {str(error).strip().splitlines()[0]}"
            ) from None
        if key is not None and stamp.get("key") != key:
            made_for = f"{stamp.get('model')} ({stamp.get('precision')})" if stamp else "no fastsam3d model"
            raise CheckpointError(
                f"the ONNX encoder {path} was made for {made_for}, not for these weights in this "
                "precision and versions: export it again (fastsam3d export)"
            )
        self.path = Path(path)
        self.img_size = img_size

    def _open(self, path: str | Path, threads: int) -> dict:
        """Load the file; return its fastsam3d stamp (``{}`` if it has none)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # ONNX Runtime's threads otherwise spin for a while after each run, taking the cores from the
        # torch work that follows (ROI crop, decoder, paste): the decoder ran 2-3x slower beside them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        return json.loads(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))

    def _run(self, item: np.ndarray) -> list[np.ndarray]:
        """One (1, C, ...) input -> the file's outputs."""
        return self.session.run(None, {self.input_name: item})

    @staticmethod
    def _unsupported(error: Exception) -> str:
        """Why a valid file cannot run in this runtime ("" when the file itself is at fault)."""
        return ""

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        items = [self._run(item[None].float().cpu().numpy()) for item in image]
        outputs = tuple(torch.cat([torch.from_numpy(item[i]) for item in items]) for i in range(len(items[0])))
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        return f"path={self.path}, img_size={self.img_size}"


class OpenVinoEncoder(OnnxEncoder):
    """The same file run by OpenVINO's CPU plugin (fp32 arithmetic, latency mode). OpenVINO's
    kernels ran the ``default`` U-Net 1.6x faster than torch's on the 2-core AVX2 CPU (73 against
    115 ms). Safe to call from several threads: each call takes an idle inference request."""

    runtime = "OpenVINO"

    def _open(self, path: str | Path, threads: int) -> dict:
        import openvino

        core = openvino.Core()
        graph = core.read_model(str(path))
        stamp = (
            graph.get_rt_info(["framework", METADATA_KEY]).astype(str)
            if graph.has_rt_info(["framework", METADATA_KEY])
            else "{}"
        )
        settings = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(graph, "CPU", settings)
        self._idle: list = []
        self._lock = threading.Lock()
        return json.loads(stamp)

    @staticmethod
    def _unsupported(error: Exception) -> str:
        """The operations OpenVINO could not convert, from its log (its first line names only its source file)."""
        unconverted = sorted(set(re.findall(r"^-- (\w+?)(?:-\d+)? with a message", str(error), re.MULTILINE)))
        return f"it cannot convert its {', '.join(unconverted)} operations (use onnx-fp32)" if unconverted else ""

    def _run(self, item: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            return list(request.infer([item], share_outputs=False).values())  # copies: the request is reused
        finally:
            with self._lock:
                self._idle.append(request)


def _onnx_encode(encoder: OnnxEncoder, scales: int):
    """``ClickUNet3D.encode`` with the U-Net in ONNX Runtime or OpenVINO: intensity channels in
    torch, then the file; its (B, D, H, W, C) outputs are viewed as channels-last (B, C, D, H, W)."""

    def encode(image: torch.Tensor) -> ClickUNetFeatures:
        outputs = [t.permute(0, 4, 1, 2, 3) for t in encoder(intensity_channels(image))]
        return ClickUNetFeatures(outputs[:scales], outputs[scales], outputs[scales + 1], {})

    return encode


def _cached_encoder(model: nn.Module, precision: str, key: str, runner: type[OnnxEncoder]) -> OnnxEncoder:
    """The cached file of ``model``'s encoder in ``precision`` (``fp32`` / ``int8``) with ``key``,
    opened by ``runner``; exported first if it is absent, stale or unreadable. Then the cache keeps
    the ``CACHED_ENCODERS_KEPT`` files of this model and precision used last (:func:`prune_encoders`)."""
    path = cache_dir() / f"{model.config.name}-{precision}-{key[:16]}.onnx"
    encoder = None
    if path.is_file():
        try:
            encoder = runner(path, model.img_size, key)
        except UnsupportedEncoder:
            raise  # the file is sound: exporting it again would not help
        except CheckpointError as error:
            log.warning(f"rebuilding the cached ONNX encoder: {error}")
    if encoder is None:
        log.info(f"exporting the {model.config.name} encoder to ONNX ({precision}) once, into {path.parent}")
        export_encoder(model, path, precision, key)
        encoder = runner(path, model.img_size, key)
    with contextlib.suppress(OSError):  # a read-only cache, or a file another process removed: no matter
        os.utime(path)  # its time is its last use
    prune_encoders(model.config.name, precision)
    return encoder


def _last_use(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile by another process
        return -math.inf


def prune_encoders(name: str, precision: str, keep: int = CACHED_ENCODERS_KEPT) -> list[Path]:
    """Delete the cached encoder files of model ``name`` in ``precision`` beyond the ``keep`` used
    last; returns the deleted paths. Each new version of the modeling code, torch or a runtime, and
    each other checkpoint, makes a new file (the teacher's: 360 MB), so the cache grew with every
    upgrade. A process that opened a file keeps running it (ONNX Runtime and OpenVINO read it on
    opening; a deleted file stays readable while open); a file that cannot be deleted stays."""
    files = sorted(cache_dir().glob(f"{glob.escape(name)}-{precision}-*.onnx"), key=_last_use, reverse=True)
    deleted = []
    for stale in files[keep:]:
        try:
            stale.unlink()
        except OSError:
            continue
        deleted.append(stale)
    return deleted


def use_onnx_encoder(model: nn.Module, precision: str, path: str | Path | None = None) -> nn.Module:
    """Run ``model``'s encoder exported to ONNX, in place: under ONNX Runtime (``precision``
    ``"onnx-fp32"`` / ``"onnx-int8"``) or OpenVINO (``"openvino-fp32"``).

    Without ``path`` the file comes from the cache (exported on first use); a given ``path`` must
    have been exported from these weights in this precision (:func:`export_encoder`), else it is
    refused. A 3D SAM's ``image_encoder`` is replaced (its torch weights freed); ClickUNet3D's
    ``encode`` runs the file. Sets ``model.precision``; returns the model.
    """
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"unknown ONNX precision {precision!r}; use one of {', '.join(ONNX_PRECISIONS)}")
    runtime, arithmetic = precision.split("-")
    runner = OpenVinoEncoder if runtime == "openvino" else OnnxEncoder
    require_extra(
        "fast",
        "onnxruntime",
        "onnx",
        *(["openvino"] if runner is OpenVinoEncoder else []),
        feature=f"--precision {precision}",
    )
    key = encoder_key(model, arithmetic)
    encoder = _cached_encoder(model, arithmetic, key, runner) if path is None else runner(path, model.img_size, key)
    if isinstance(model, (Sam3D, Sam2D)):
        model.image_encoder = encoder
    else:
        model.onnx_encoder = encoder
        model.encode = _onnx_encode(encoder, len(model.config.channels) - 1)
    model.precision = precision
    return model


INT8_MIN_WIDTH = 512  # narrower Linear layers ran slower in int8 than in fp32 here (192: 0.4x, 384: 0.6x)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX, read from /proc/cpuinfo);
    elsewhere torch emulates bf16 products and convolutions. True where it cannot tell."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def default_precision(model: nn.Module, device: str | torch.device = "cpu") -> str:
    """What ``"auto"`` runs ``model`` (in fp32) in on ``device``: on a CPU, the precision measured
    fastest for its architecture on this machine among those that keep its masks
    (:func:`fastsam3d.tuning.measured_precision`, measured once); else :func:`rule_precision`."""
    if getattr(model, "precision", "fp32") == "fp32":
        from .tuning import measured_precision

        measured = measured_precision(model, device)
        if measured is not None:
            return measured.precision
    return rule_precision(model, device)


def rule_precision(model: nn.Module, device: str | torch.device = "cpu") -> str:
    """The fastest precision that keeps the masks, by what was measured on the project's machines
    (docs/models.md "Precision"); what ``auto`` runs where nothing is measured (a GPU, or
    ``FASTSAM3D_AUTO_PRECISION=rule``):

    - a 3D SAM's ViT image encoder at least ``INT8_MIN_WIDTH`` wide (the official student and
      teacher) on a CPU: torch's int8;
    - LiteMedSAM's TinyViT on a CPU, with ONNX Runtime installed: ``onnx-fp32``, the same arithmetic
      1.6x faster (a 256-px slice 694-719 ms against 1093-1153 ms on the 2-core AVX2 CPU, embeddings
      equal to 1.3e-6; its int8, in torch or ONNX Runtime, failed the gate or was slower);
    - fp32 otherwise (on a GPU, an H200, bf16 was no faster and failed the default model's gate:
      docs/benchmarks.md "GPU"; the 3D encoders in ONNX Runtime were no faster in a session here).
    """
    device = torch.device(device)
    if isinstance(model, Sam2D):
        tiny = model.config.encoder == "tiny-vit"
        return "onnx-fp32" if device.type == "cpu" and tiny and onnx_runtime_available() else "fp32"
    return "int8" if device.type == "cpu" and int8_pays(model) else "fp32"


def int8_pays(model: nn.Module) -> bool:
    """Whether torch's int8 can speed up ``model`` on a CPU: a 3D model whose image encoder has
    Linear layers at least ``INT8_MIN_WIDTH`` wide (the official student and teacher), where this
    torch has its int8 kernels."""
    encoder = getattr(model, "image_encoder", None)
    widths = [m.in_features for m in encoder.modules() if isinstance(m, nn.Linear)] if encoder is not None else []
    three_d = getattr(model, "spatial_dims", 3) == 3
    return three_d and bool(widths) and max(widths) >= INT8_MIN_WIDTH and int8_available()


def onnx_runtime_available() -> bool:
    """Whether the ``fast`` extra (ONNX Runtime and onnx) is installed."""
    return _installed("onnxruntime", "onnx")


def openvino_available() -> bool:
    """Whether OpenVINO (in the ``fast`` extra) is installed beside ONNX Runtime and onnx."""
    return _installed("onnxruntime", "onnx", "openvino")


def _installed(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in modules)


def apply_model_precision(model: nn.Module, precision: str, device: str | torch.device = "cpu") -> nn.Module:
    """A segmentation model in ``precision`` (``"auto"``: :func:`default_precision`), in place.

    A 3D SAM's image encoder (the first click) gets the precision; its prompt encoder and mask
    decoder (the cached clicks) stay fp32. ``"onnx-fp32"`` / ``"onnx-int8"`` run the encoder under
    ONNX Runtime, ``"openvino-fp32"`` under OpenVINO (:func:`use_onnx_encoder`). Models without ``image_encoder`` (ClickUNet3D) get it
    as a whole. The chosen precision is stored as ``model.precision``.
    """
    if precision == "auto":
        precision = default_precision(model, device)
    if precision not in PRECISIONS + ONNX_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; use auto or one of {', '.join(PRECISIONS + ONNX_PRECISIONS)}"
        )
    current = getattr(model, "precision", "fp32")
    if current == precision:
        model.precision = precision
        return model
    if current != "fp32":
        raise ValueError(f"the model already runs in {current}; load it again for {precision}")
    if precision in CPU_ONLY_PRECISIONS and torch.device(device).type != "cpu":
        raise ValueError(f"{precision} runs on the CPU only, not on {device}; use bf16 or fp32 there")
    if precision in ONNX_PRECISIONS:
        return use_onnx_encoder(model, precision)
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            "bf16 on this CPU is emulated (no AVX512-BF16 or AMX): the encoder runs 10-100x slower than "
            "in fp32 here (the default model: 26 s instead of 0.2 s); use --precision auto or fp32",
            stacklevel=2,
        )
    encoder = getattr(model, "image_encoder", None)
    target = encoder if encoder is not None else model
    if precision == "int8" and not any(isinstance(m, nn.Linear) for m in target.modules()):
        raise ValueError(f"int8 has no effect on {type(model).__name__} (no Linear layers to quantise); use fp32")
    apply_precision(target, precision)
    model.precision = precision
    return model
