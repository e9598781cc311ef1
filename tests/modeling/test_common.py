import torch

from ..helpers import randomise


def test_patch_expand_equals_conv_transpose():
    from fastsam3d.modeling.common import PatchExpand3d

    layer = PatchExpand3d(12, 5)
    randomise(layer)
    x = torch.randn(2, 12, 3, 4, 5)
    expected = torch.nn.functional.conv_transpose3d(x, layer.weight, layer.bias, stride=2)
    assert torch.allclose(layer(x), expected, atol=1e-5)
