"""Reading checkpoints (fastsam3d.checkpoints): official .pth files, architecture from keys, strict
loads whose errors name the cause, refused pickles and non-checkpoint files (through load_model)."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsam3d.checkpoints import infer_config
from fastsam3d.errors import CheckpointError
from fastsam3d.registry import build_model, load_model


def _official_checkpoint(path, model, **extra):
    """A file shaped like the official training checkpoints (weights beside pickled args)."""
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": {},
            "args": argparse.Namespace(model_type="vit_b_ori", lr=8e-4),
            **extra,
        },
        path,
    )
    return path


def test_official_checkpoint_with_pickled_args_loads_and_infers_architecture(tmp_path):
    teacher = build_model("tiny-teacher")
    path = _official_checkpoint(tmp_path / "sam_med3d_tiny.pth", teacher)
    loaded = load_model(path)
    config = loaded.config
    assert (config.depth, config.window_size, config.global_attn_indexes) == (4, 14, (1, 3))
    assert config.block_style == "prenorm" and config.skip_layer == 0
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), teacher.encode(x))


def test_student_checkpoint_is_recognised(tmp_path):
    student = build_model("tiny-student")
    config = infer_config(student.state_dict())
    assert (config.skip_layer, config.block_style, config.window_size) == (2, "fastsam3d", 0)


def test_encoder_only_student_needs_and_takes_a_decoder_checkpoint(tmp_path):
    student = build_model("tiny-student")
    encoder_only = {
        k.removeprefix("image_encoder."): v for k, v in student.state_dict().items() if k.startswith("image_encoder.")
    }
    torch.save({"model_state_dict": encoder_only, "args": argparse.Namespace(epochs=84)}, tmp_path / "student.pth")
    decoder_source = _official_checkpoint(tmp_path / "teacher.pth", build_model("tiny-teacher"))
    with pytest.raises(CheckpointError, match="encoder-only"):
        load_model(tmp_path / "student.pth")
    model = load_model(tmp_path / "student.pth", decoder_checkpoint=decoder_source)
    assert model.config.skip_layer == 2


def test_wrong_model_names_the_cause(tmp_path):
    path = _official_checkpoint(tmp_path / "student_full.pth", build_model("tiny-student"))
    with pytest.raises(CheckpointError) as error:
        load_model("tiny-teacher", checkpoint=path)
    message = str(error.value)
    assert "missing" in message and "2 MLP-only" in message and "\n" not in message


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="holds Python objects besides weights") as error:
        load_model(path)
    assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoints(tmp_path, content):
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError):
            load_model(path)


def test_files_that_are_not_checkpoints(tmp_path):
    from fastsam3d.io import Volume, write_volume

    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError, match="is a text file, not a model checkpoint"):
        load_model(text)
    volume = Volume(np.zeros((4, 4, 4), np.float32), np.ones(3), np.zeros(3), np.eye(3))
    for name in ("ct.nii.gz", "ct.nii", "ct.nrrd"):
        image = write_volume(volume, tmp_path / name).rename(tmp_path / f"{name}.pth")
        with pytest.raises(CheckpointError, match=r"is an image .*, not a model checkpoint"):
            load_model("tiny-teacher", checkpoint=image)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads Linux's /proc/self/smaps")
def test_a_mapped_tensor_is_copied_and_its_pages_leave_the_process(tmp_path):
    from fastsam3d.checkpoints import _mapped_ranges, _out_of_mapping

    path = tmp_path / "weights.bin"
    np.arange(2**20, dtype=np.float32).tofile(path)  # 4 MB
    tensor = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c"))  # a private mapping, as safetensors'
    ranges = _mapped_ranges(path)
    assert any(low <= tensor.data_ptr() < high for low, high in ranges)

    def resident_kb() -> int:
        lines = Path("/proc/self/smaps").read_text().splitlines()
        for index, line in enumerate(lines):
            if line.endswith(str(path)):
                return next(int(entry.split()[1]) for entry in lines[index + 1 :] if entry.startswith("Rss:"))
        return 0

    assert float(tensor.sum()) > 0 and resident_kb() >= 4000  # read: its pages are resident
    copy = _out_of_mapping(tensor, ranges)
    assert resident_kb() < 100
    assert torch.equal(copy, torch.arange(2**20, dtype=torch.float32))
    heap = torch.arange(2**20, dtype=torch.float32)  # outside the file's mapping: left as it is
    assert torch.equal(_out_of_mapping(heap, ranges), heap) and torch.equal(heap, copy)
