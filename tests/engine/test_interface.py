"""Both engines against one interface: the same verbs, signatures and defaults, undo/redo,
transactions and errors (the 3D Session with a stand-in 3D SAM, the SliceSession with a stand-in 2D SAM)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fastsam3d.clicks import dice
from fastsam3d.engine.interface import Engine, warm_up
from fastsam3d.engine.session2d import SliceSession
from fastsam3d.engine.session3d import Session
from fastsam3d.errors import PromptError
from fastsam3d.io import read_volume

from ..helpers import BrightInBox, IntensityModel, ellipsoid_volume, sphere_volume

VERBS = [name for name, value in vars(Engine).items() if callable(value) and not name.startswith("_")]


@pytest.mark.parametrize("engine", [Session, SliceSession])
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_the_interface_signature(engine, verb):
    expected = inspect.signature(getattr(Engine, verb)).parameters
    actual = inspect.signature(getattr(engine, verb)).parameters
    for name, parameter in expected.items():
        assert name in actual, f"{engine.__name__}.{verb} lacks {name}"
        assert actual[name].kind == parameter.kind and actual[name].default == parameter.default, (
            f"{engine.__name__}.{verb}({name}) differs from the interface"
        )
    for name in set(actual) - set(expected):  # an engine's own options: keyword-only, with a default
        assert actual[name].kind == inspect.Parameter.KEYWORD_ONLY and actual[name].default is not inspect._empty


def test_both_engines_open_alike():
    assert list(inspect.signature(Session).parameters)[:2] == list(inspect.signature(SliceSession).parameters)[:2]
    for engine in (Session, SliceSession):
        later = list(inspect.signature(engine).parameters.values())[2:]
        assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in later), engine.__name__


@pytest.fixture(params=["3d", "2d"])
def engine(request):
    """(engine on its volume, truth mask, a voxel inside, the slice axis)."""
    if request.param == "3d":
        volume, inside = sphere_volume()
        session = Session(IntensityModel(), device="cpu")
    else:
        volume, inside = ellipsoid_volume()
        session = SliceSession(BrightInBox(), device="cpu")
    session.set_image(volume)
    centre = np.argwhere(inside).mean(0).round().astype(int)
    return session, inside, centre


def test_verbs_undo_redo_and_results(engine, tmp_path):
    session, inside, centre = engine
    assert isinstance(session, Engine)
    label = session.add_object("target")
    where = np.argwhere(inside[:, :, centre[2]])
    low, high = (*where.min(0), centre[2]), (*where.max(0), centre[2])
    session.set_box(low, high, depth_mm=60.0)  # a box drawn on one slice, given depth
    assert dice(session.mask(), inside) > 0.8
    session.add_click(centre)
    session.add_scribble([centre - (2, 0, 0), centre + (2, 0, 0)])
    outline = [(*where.min(0), centre[2]), (where.min(0)[0], where.max(0)[1], centre[2]), (*where.max(0), centre[2])]
    session.add_lasso(outline)
    assert len(session.objects[label].history) == 5
    before = session.label_map()
    assert session.undo() is not None and session.redo() is not None
    assert np.array_equal(session.label_map(), before)
    probability = session.probability()
    assert probability.shape == inside.shape and probability.min() >= 0 and probability.max() <= 1
    assert session.uncertainty(samples=2).entropy.ndim == 3
    assert session.volume_ml() == pytest.approx(session.mask().sum() * np.prod(session.volume.spacing) / 1000)
    assert np.array_equal(read_volume(session.save_labels(tmp_path / "labels.nii.gz")).array, session.label_map())
    session.reset()
    assert not session.mask().any()
    session.remove_object(label)
    assert not session.objects and not session.label_map().any()


def test_a_failed_transaction_leaves_nothing_behind(engine):
    session, inside, centre = engine
    where = np.argwhere(inside[:, :, centre[2]])
    session.set_box((*where.min(0), centre[2]), (*where.max(0), centre[2]))
    history = list(session.objects[1].history)
    labels = session.label_map()
    with pytest.raises(PromptError), session.transaction():
        session.add_click(centre, positive=False)
        session.add_object("second")
        session.add_click(centre)
        session.add_click((10_000, 0, 0))  # outside: the whole block is rolled back
    assert list(session.objects) == [1] and session.active == 1
    assert session.objects[1].history == history
    assert np.array_equal(session.label_map(), labels)


@pytest.mark.parametrize(
    ("verb", "arguments", "message"),
    [
        ("add_click", ((10_000, 0, 0),), "outside the volume"),
        ("add_clicks", ([(1, 1, 1)], []), "one include/exclude flag"),
        ("add_scribble", ([(1, 1, 1)],), "at least 2 points"),
        ("add_lasso", ([(1, 1, 1), (2, 2, 1)],), "at least 3 points"),
        ("set_mask", (np.zeros((2, 2, 2)),), "shape"),
        ("undo", (7,), "no object 7"),
    ],
)
def test_bad_prompts_give_the_same_errors(engine, verb, arguments, message):
    session, _, _ = engine
    with pytest.raises(PromptError, match=message):
        getattr(session, verb)(*arguments)
    assert not session.objects


@pytest.mark.parametrize("model_type", [IntensityModel, BrightInBox])
def test_warm_up_runs_the_model_once_on_a_small_volume(model_type):
    model = model_type()
    calls = {"encode": 0, "decode": 0}
    for name in calls:
        method = getattr(model, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(model, name, counted)
    assert warm_up(model, "cpu") > 0
    assert calls["encode"] == 1 and calls["decode"] >= 1  # one ROI or slice: a full click, not a propagation


def test_binary_entropy_in_chunks_is_the_closed_form(monkeypatch):
    from fastsam3d.engine import answers

    monkeypatch.setattr(answers, "ENTROPY_CHUNK", 7)  # chunk edges inside rows and planes
    rng = np.random.default_rng(0)
    p = rng.random((5, 6, 4)).astype(np.float32)
    p[0, 0, :2] = (0.0, 1.0)
    p = p.transpose(2, 0, 1)  # not contiguous
    entropy = answers.binary_entropy(p)
    q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    expected = np.where(p > 0, -(q * np.log2(q) + (1 - q) * np.log2(1 - q)), 0)
    assert entropy.shape == p.shape and entropy.dtype == np.float32
    np.testing.assert_allclose(entropy, expected, atol=1e-5)
    assert entropy[0, 0, 0] == 0 and entropy[1, 0, 0] < 1e-4
    assert answers.binary_entropy(np.full((3,), 0.5, dtype=np.float32)) == pytest.approx(1.0)
