"""ClickUNet3D (the default model's architecture): the engine contract, range invariance, clicks honoured."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsam3d.engine.session3d import Session
from fastsam3d.io import Volume
from fastsam3d.modeling.click_unet import ClickUNet3D, ClickUNetConfig, intensity_channels
from fastsam3d.registry import build_model, load_model, save_model

SMALL = ClickUNetConfig(name="click-unet-small", img_size=32, channels=(8, 8, 16), prompt_channels=(8, 8, 8))


def test_features_are_cached_once_and_logits_keep_the_roi_resolution():
    model = ClickUNet3D(SMALL).eval()
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        features = model.encode(image)
        logits, score = model.decode(features, torch.tensor([[[16.0, 16, 16]]]), torch.tensor([[1]]))
    assert [tuple(share.shape[1:]) for share in features.shares] == [(8, 16, 16, 16), (8, 8, 8, 8)]
    assert logits.shape == (1, 1, 32, 32, 32) and model.low_res_size == (32, 32, 32) and score.shape == (1, 1)


def test_a_batch_of_prompt_sets_shares_one_embedding():
    """Uncertainty runs decode several jittered prompt sets on the features of one ROI."""
    model = ClickUNet3D(SMALL).eval()
    with torch.inference_mode():
        features = model.encode(torch.randn(1, 1, 32, 32, 32))
        coords = torch.tensor([[[10.0, 12, 14]], [[20.0, 18, 16]]])
        batched, _ = model.decode(features, coords, torch.tensor([[1], [1]]), mask_input=torch.zeros(1, 1, 32, 32, 32))
        single, _ = model.decode(features, coords[1:], torch.tensor([[1]]))
    assert batched.shape[0] == 2
    torch.testing.assert_close(batched[1:], single, atol=1e-5, rtol=1e-5)


def test_intensity_channels_ignore_the_scanner_range():
    """uint8 [0, 255], float [0, 1] and Hounsfield-like versions of one image give one input."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(0, 1, (1, 1, 24, 24, 24)).astype(np.float32))
    unit = (image - image.min()) / (image.max() - image.min())
    hounsfield = unit * 2000 - 1000
    torch.testing.assert_close(intensity_channels(unit), intensity_channels(hounsfield), atol=1e-4, rtol=0)
    quantised = torch.round(unit * 255)
    difference = (intensity_channels(quantised) - intensity_channels(unit)).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.05


def test_intensity_channels_sorted_by_numpy_equal_those_sorted_by_torch(monkeypatch):
    """The quantiles' sort runs in NumPy on the CPU: the channels are torch's, bit for bit (ties included)."""
    from fastsam3d.modeling import click_unet

    image = torch.round(torch.randn(2, 1, 30, 31, 32, generator=torch.Generator().manual_seed(7)) * 40)  # many ties
    fast, rows = intensity_channels(image), click_unet.sorted_rows(image.flatten(1)[:, ::7])
    assert torch.equal(rows, image.flatten(1)[:, ::7].sort(dim=1).values)
    monkeypatch.setattr(click_unet, "sorted_rows", lambda values: values.sort(dim=1).values)
    assert torch.equal(fast, intensity_channels(image))


@pytest.mark.parametrize("positive", [True, False])
def test_clicks_are_honoured_whatever_the_network_predicts(positive):
    model = ClickUNet3D(SMALL).eval()
    with torch.no_grad():
        model.head_out.bias.fill_(-50.0 if positive else 50.0)  # the network says the opposite everywhere
        features = model.encode(torch.randn(1, 1, 32, 32, 32))
        point = torch.tensor([[[10.3, 20.7, 5.5]]])
        logits, _ = model.decode(features, point, torch.tensor([[int(positive)]]))
    from fastsam3d.engine.roi import linear_weights

    weights = [torch.from_numpy(linear_weights(np.array([c]), 32))[0] for c in point[0, 0].tolist()]
    at_click = torch.einsum("xyz,x,y,z->", logits[0, 0], *weights)  # trilinear value at the click
    assert (at_click > 0) == positive


def test_honouring_all_clicks_at_once_equals_clamping_click_by_click():
    """Overlapping include and exclude clicks (some on the same cells, some at the ROI's edges, some
    padding) in a batch of two: the same logits as clamping each click's 2×2×2 cells in turn."""
    from fastsam3d.modeling.click_unet import CLICK_MARGIN

    generator = torch.Generator().manual_seed(5)
    size = 8
    logits = torch.randn(2, 1, size, size, size, generator=generator) * 4
    coords = torch.rand(2, 60, 3, generator=generator) * 4 + 1.5  # crowded: cells shared by several clicks
    coords[:, :4] = torch.tensor([[-0.4, 3.2, 7.5], [7.4, 7.9, 0.1], [0.0, 0.0, 0.0], [6.99, 2.0, 7.0]])
    labels = torch.randint(-1, 2, (2, 60), generator=generator)
    expected = logits.clone()
    for b in range(2):
        for n in range(60):
            if labels[b, n] < 0:
                continue
            low = coords[b, n].floor().long()
            cells = tuple(slice(max(int(v), 0), min(int(v) + 2, size)) for v in low)
            region = expected[b, 0][cells]
            expected[b, 0][cells] = (
                region.clamp_min(CLICK_MARGIN) if labels[b, n] == 1 else region.clamp_max(-CLICK_MARGIN)
            )
    honoured = ClickUNet3D._honour(logits, coords, labels)
    assert torch.equal(honoured, expected)
    assert not torch.equal(honoured, logits)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7, 33), (1, 3, 1, 40, 40), (1, 8, 32, 32, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampling_axis_by_axis_equals_trilinear_interpolation(shape, channels_last, monkeypatch):
    from fastsam3d.modeling import click_unet
    from fastsam3d.modeling.click_unet import upsample_2x

    monkeypatch.setattr(click_unet, "SEPARABLE_UPSAMPLE_VALUES", 1)  # the axis-by-axis path for every size
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        upsampled = upsample_2x(x)
    expected = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    torch.testing.assert_close(upsampled, expected, atol=1e-6, rtol=1e-6)


def test_decoding_without_gradients_equals_decoding_with_them(monkeypatch):
    """Inference takes the fast paths (upsampling axis by axis, ...); training the plain ones."""
    from fastsam3d.modeling import click_unet

    from ..helpers import randomise

    monkeypatch.setattr(click_unet, "SEPARABLE_UPSAMPLE_VALUES", 1)
    torch.manual_seed(1)
    model = ClickUNet3D(SMALL)
    randomise(model)
    features = model.encode(torch.randn(1, 1, 32, 32, 32))
    coords, labels = torch.tensor([[[16.0, 16, 16], [8.0, 20, 12]]]), torch.tensor([[1, 0]])
    previous = torch.randn(1, 1, 32, 32, 32)
    trained = model.decode(features, coords, labels, mask_input=previous)[0]
    assert trained.requires_grad
    with torch.inference_mode():
        inferred = model.decode(features, coords, labels, mask_input=previous)[0]
    torch.testing.assert_close(inferred, trained.detach(), atol=1e-5, rtol=1e-5)


def test_config_and_weights_round_trip(tmp_path):
    model = build_model(SMALL)
    path = save_model(model, tmp_path / "small.safetensors")
    loaded = load_model(str(path))
    assert isinstance(loaded, ClickUNet3D) and loaded.config == SMALL
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_session_uses_the_models_roi_grid():
    """A 64³ ROI at 3 mm: the session asks the model for its spacing, not the SAM 1.5 mm."""
    model = ClickUNet3D(ClickUNetConfig(img_size=64, channels=(8, 8, 16), prompt_channels=(8, 8, 8))).eval()
    volume = Volume(
        np.random.default_rng(0).normal(0, 1, (80, 70, 40)).astype(np.float32), (1.0, 1.0, 2.0), np.zeros(3), np.eye(3)
    )
    session = Session(model)
    session.set_image(volume)
    session.add_click((40, 35, 20))
    ((roi, logits),) = session.objects[session.active].state.logits
    assert roi.size == 64 and logits.shape[-1] == 64
    assert np.abs(roi.step) == pytest.approx((3.0, 3.0, 1.5))
    assert session.mask()[40, 35, 20]  # the clicked voxel is inside (clicks are honoured)
    session.add_click((40, 35, 20), positive=False)
    assert not session.mask()[40, 35, 20]


@pytest.mark.parametrize(
    ("channels", "size", "kernel", "stride", "normed"),
    [(48, 16, 3, 1, 16), (8, 12, 3, 2, 16), (6, 10, 1, 1, 16), (8, 8, 3, 1, 8), (6, 5, 1, 1, 6), (3, 32, 1, 1, 16)],
)
def test_cpu_convolution_and_instance_norm_paths_equal_pytorchs(channels, size, kernel, stride, normed):
    """The oneDNN convolution (PyTorch sends small 3D ones to a slow kernel) and the channels-last
    instance norm (batch norm over voxels; below 16 channels, rows of several voxels, where the
    voxels fill such rows (8 channels at 8³) or not (6 at 5³)) give PyTorch's numbers, for a batch of
    two, with gradients; without gradients the norm works in place on rows (below 16 channels, or on
    large maps: 16 at 32³) and gives the same numbers."""
    from fastsam3d.modeling.click_unet import CHANNELS_LAST, IN_PLACE_NORM_VALUES, Conv3d, InstanceNorm3d

    from ..helpers import randomise

    conv = Conv3d(channels, normed, kernel, stride=stride, padding=kernel // 2)
    norm = InstanceNorm3d(normed, affine=True, inplace=True)
    randomise(conv)
    randomise(norm, seed=2)
    conv.to(memory_format=CHANNELS_LAST)
    x = torch.randn(2, channels, size, size, size, generator=torch.Generator().manual_seed(1)) * 3 + 20  # mean >> std
    x = x.contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    out = norm(conv(x))
    expected = torch.nn.functional.instance_norm(
        torch.nn.functional.conv3d(x, conv.weight, conv.bias, stride, kernel // 2), weight=norm.weight, bias=norm.bias
    )
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    probe = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    (gradient,) = torch.autograd.grad((out * probe).sum(), conv.weight)
    (expected_gradient,) = torch.autograd.grad((expected * probe).sum(), conv.weight)
    scale = expected_gradient.abs().max().item()  # float32 sums over 2 x 32³ voxels: errors ~1e-4 of it
    torch.testing.assert_close(gradient, expected_gradient, atol=3e-4 * scale, rtol=1e-3)
    with torch.no_grad():
        features = conv(x)
        normalised = norm(features)
        torch.testing.assert_close(normalised, expected, atol=1e-4, rtol=1e-4)
        folded = normed < 16 or normed * size**3 >= IN_PLACE_NORM_VALUES
        assert (normalised.data_ptr() == features.data_ptr()) == folded


def _reference_decode(model, image, coords, labels, previous):
    """The decoder written from its definition: prompt maps concatenated, similarity as plain cosine
    similarity to every clicked voxel's features, each prompt layer on the concatenation of [coarser
    decoder output, image features, prompt maps], max pooling, out-of-place head (no honouring)."""
    import torch.nn.functional as F

    from fastsam3d.modeling.click_unet import box_map, click_maps, intensity_channels

    features = model.encode(image)
    levels = model.image_features(intensity_channels(image))[1:]
    size = features.unit.shape[-1]
    flat = features.unit[0].flatten(1)  # (C, V)
    index = coords[0].round().long()
    similarity = []
    for value in (1, 0):
        chosen = index[labels[0] == value]
        vectors = features.unit[0][:, chosen[:, 0], chosen[:, 1], chosen[:, 2]]
        similarity.append((vectors.T @ flat).amax(0).clamp_min(0).view(1, size, size, size))
    prompts = torch.cat(
        [
            click_maps(coords, labels, size),
            torch.sigmoid(previous),
            box_map(None, 1, size, "cpu"),
            torch.stack(similarity, 1),
        ],
        1,
    )
    pyramid = [prompts]
    for _ in levels:
        pyramid.append(F.max_pool3d(pyramid[-1], 2))
    x = model.coarse(torch.cat([levels[-1], pyramid[-1]], 1))
    for level in reversed(range(1, len(levels))):
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
        x = model.fuse[level - 1](torch.cat([x, levels[level - 1], pyramid[level]], 1))
    x = F.interpolate(model.head_decoder(x), scale_factor=2, mode="trilinear", align_corners=False)
    return model.head_out(F.leaky_relu(x + features.head + model.head_prompts(prompts), 0.01))


def test_decoder_equals_its_definition_with_gradients(monkeypatch):
    """The prompt maps written in place, the similarity as a convolution in slabs of planes, the image
    features' shares of the prompt layers computed once, the pooling as maxima of alternate planes and
    the in-place head give the plain form's logits and parameter gradients (training runs through them)."""
    from fastsam3d.modeling import click_unet

    from ..helpers import randomise

    monkeypatch.setattr(click_unet, "SIMILARITY_VALUES", 3 * 32 * 32 * 8)  # slabs of 3 planes
    torch.manual_seed(0)
    model = ClickUNet3D(SMALL)
    randomise(model)
    image = torch.randn(1, 1, 32, 32, 32)
    coords = torch.tensor([[[16.0, 16, 16], [8.0, 20, 12], [24.0, 10, 18]]])
    labels = torch.tensor([[1, 0, 1]])
    previous = torch.randn(1, 1, 32, 32, 32)
    outputs, gradients = [], []
    for decode in (
        lambda: model.decode(model.encode(image), coords, labels, mask_input=previous, honour_clicks=False)[0],
        lambda: _reference_decode(model, image, coords, labels, previous),
    ):
        model.zero_grad()
        logits = decode()
        logits.square().mean().backward()
        outputs.append(logits.detach())
        gradients.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    for new, old in zip(*gradients, strict=True):
        torch.testing.assert_close(new, old, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("values", [None, 5 * 32 * 32 * 24, 1])
def test_similarity_maps_equal_their_definition_across_convolution_chunks(values, monkeypatch):
    """40 include and 30 exclude points: three convolutions of at most SIMILARITY_FILTERS vectors, one
    of them holding both groups, give the max cosine similarity of the plain definition, over the whole
    ROI at once, in slabs of 5 planes (the last one of 2) or one plane at a time."""
    from fastsam3d.modeling import click_unet
    from fastsam3d.modeling.click_unet import SIMILARITY_FILTERS

    if values is not None:
        monkeypatch.setattr(click_unet, "SIMILARITY_VALUES", values)
    model = ClickUNet3D(SMALL).eval()
    generator = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        unit = model.encode(torch.randn(1, 1, 32, 32, 32, generator=generator)).unit
        coords = torch.rand(1, 70, 3, generator=generator) * 31
        labels = torch.tensor([[1] * 40 + [0] * 30])
        maps = torch.empty(1, 2, 32, 32, 32)
        model._similarity(unit, coords, labels, maps)
    assert 2 * SIMILARITY_FILTERS < 70  # three chunks
    index = coords[0].round().long()
    flat = unit[0].flatten(1)
    for channel, value in enumerate((1, 0)):
        chosen = index[labels[0] == value]
        vectors = unit[0][:, chosen[:, 0], chosen[:, 1], chosen[:, 2]]
        expected = (vectors.T @ flat).amax(0).clamp_min(0).view(32, 32, 32)
        torch.testing.assert_close(maps[0, channel], expected, atol=1e-5, rtol=1e-5)


def test_similarity_of_a_long_stroke_samples_it_evenly():
    """A stroke of more points than SIMILARITY_POINTS is compared through an even sample of them,
    include and exclude separately, the same as with that sample given as clicks."""
    from fastsam3d.modeling.click_unet import SIMILARITY_POINTS

    model = ClickUNet3D(SMALL).eval()
    with torch.inference_mode():
        unit = model.encode(torch.randn(1, 1, 32, 32, 32)).unit
        stroke = torch.stack([torch.full((100,), 10.0), torch.linspace(2, 29, 100), torch.full((100,), 16.0)], 1)
        coords = torch.cat([stroke, torch.tensor([[20.0, 20, 20]])])[None]
        labels = torch.tensor([[1] * 100 + [0]])
        maps = torch.empty(1, 2, 32, 32, 32)
        model._similarity(unit, coords, labels, maps)
        sample = stroke[torch.linspace(0, 99, SIMILARITY_POINTS).round().long()]
        expected = torch.empty(1, 2, 32, 32, 32)
        model._similarity(
            unit, torch.cat([sample, coords[0, -1:]])[None], torch.tensor([[1] * len(sample) + [0]]), expected
        )
    torch.testing.assert_close(maps, expected)
    assert (maps[0, 0, 10, 5, 16] - 1).abs() < 1e-5  # a voxel on the stroke is most similar to itself
    with torch.inference_mode():
        model._similarity(unit, coords, torch.full_like(labels, -1), maps)  # padding only: no similarity
    assert not maps.any()


def test_similarity_maps_kept_per_click_set_equal_those_computed_afresh(monkeypatch):
    """A session's clicks grow one at a time, are undone and redone: with the features' memo each
    decode equals one without it, a new click is compared with only its own voxel, an undo finds
    its maps kept, and the memo stays bounded."""
    from fastsam3d.modeling import click_unet
    from fastsam3d.modeling.click_unet import SIMILARITY_MEMO_MAPS, ClickUNetFeatures

    compared = []
    slab_products = click_unet._slab_products
    monkeypatch.setattr(
        click_unet,
        "_slab_products",
        lambda unit, columns: (compared.append(columns.shape[1]), slab_products(unit, columns))[1],
    )
    model = ClickUNet3D(SMALL).eval()
    generator = torch.Generator().manual_seed(2)
    coords = torch.rand(1, 12, 3, generator=generator) * 31
    labels = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0]])
    with torch.inference_mode():
        features = model.encode(torch.randn(1, 1, 32, 32, 32, generator=generator))
        afresh = ClickUNetFeatures(features.shares, features.unit, features.head)  # no memo
        for count in [*range(1, 13), 11, 10, 11, 12]:  # clicks added, two undone, redone
            compared.clear()
            logits = model.decode(features, coords[:, :count], labels[:, :count])[0]
            computed = sum(compared)
            compared.clear()
            expected = model.decode(afresh, coords[:, :count], labels[:, :count])[0]
            assert torch.equal(logits, expected)
            assert len(features.memo) <= SIMILARITY_MEMO_MAPS
            if count > 1:
                assert computed <= 1  # only the newest click's voxel (an undo's set is kept: none)
    assert sum(len(voxels) for _, voxels in features.memo) > 0


def test_similarity_memo_is_not_used_under_autograd():
    """Training decodes with gradients through the features: no map is kept from them."""
    model = ClickUNet3D(SMALL)
    features = model.encode(torch.randn(1, 1, 32, 32, 32))
    model.decode(features, torch.tensor([[[16.0, 16, 16]]]), torch.tensor([[1]]))[0].sum().backward()
    assert features.memo == {}
