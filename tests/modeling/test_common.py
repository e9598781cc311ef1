import pytest
import torch

from ..helpers import randomise


def test_patch_expand_equals_conv_transpose():
    from fastsam3d.modeling.common import PatchExpand3d

    layer = PatchExpand3d(12, 5)
    randomise(layer)
    x = torch.randn(2, 12, 3, 4, 5)
    expected = torch.nn.functional.conv_transpose3d(x, layer.weight, layer.bias, stride=2)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_patch_expand_on_rows_keeps_each_voxels_children_together():
    from fastsam3d.modeling.common import PatchExpand3d

    layer = PatchExpand3d(12, 5)
    randomise(layer)
    x = torch.randn(2, 12, 3, 4, 5)
    rows = layer.expand_rows(x.flatten(2).transpose(1, 2))  # (2, 60 voxels x 8 children, 5)
    placed = layer(x)  # (2, 5, 6, 8, 10)
    children = rows.view(2, 3, 4, 5, 2, 2, 2, 5).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(placed.shape)
    torch.testing.assert_close(children, placed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_3d_mask_decoder_block_order_path_equals_the_layers(multimask):
    """The 3D decoder upscales in block order and places only the returned masks; the numbers must
    be those of ``output_upscaling`` layer by layer and the hypernetwork product on every mask."""
    from fastsam3d.modeling.mask_decoder import MaskDecoder

    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=16, transformer_mlp_dim=64).eval()
    randomise(decoder)
    embedding, pe = torch.randn(2, 32, 3, 4, 5), torch.randn(1, 32, 3, 4, 5)
    sparse, dense = torch.randn(2, 3, 32), torch.randn(2, 32, 3, 4, 5)
    with torch.no_grad():
        masks, iou = decoder(embedding, pe, sparse, dense, multimask)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).expand(2, -1, -1)
        hs, src = decoder.transformer(embedding + dense, pe.expand(2, -1, -1, -1, -1), torch.cat([tokens, sparse], 1))
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(2, 32, 3, 4, 5))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        every = (hyper @ upscaled.flatten(2)).view(2, 4, 12, 16, 20)
    chosen = slice(1, None) if multimask else slice(0, 1)
    torch.testing.assert_close(masks, every[:, chosen], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(iou, decoder.iou_prediction_head(hs[:, 0])[:, chosen])


def test_3d_mask_decoder_gives_the_same_masks_with_gradients_and_trains():
    """Without gradients the upscaling's GELUs work in place; with them, out of place: the same
    masks, and a backward pass through them."""
    from fastsam3d.modeling.mask_decoder import MaskDecoder

    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=16, transformer_mlp_dim=64)
    randomise(decoder)
    inputs = (
        torch.randn(1, 32, 3, 4, 5),
        torch.randn(1, 32, 3, 4, 5),
        torch.randn(1, 3, 32),
        torch.randn(1, 32, 3, 4, 5),
    )
    with torch.inference_mode():
        inferred, _ = decoder(*inputs, False)
    trained, _ = decoder(*inputs, False)
    trained.square().mean().backward()
    torch.testing.assert_close(inferred, trained.detach())
    assert all(p.grad is not None for p in decoder.output_upscaling.parameters())


def test_feed_forward_gelu_in_place_only_where_autograd_does_not_record_it():
    from fastsam3d.modeling.common import MLPBlock

    block = MLPBlock(8, 32)
    x = torch.randn(5, 8, requires_grad=True)
    before = x.detach().clone()
    plain = block.lin2(torch.nn.functional.gelu(block.lin1(x)))
    out = block(x)
    assert torch.allclose(out, plain, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), x)
    assert torch.allclose(grad, plain_grad, atol=1e-5)
    with torch.inference_mode():
        inferred = block(x)
    assert torch.allclose(inferred, plain, atol=1e-6)
    assert torch.equal(x.detach(), before)  # only the block's own hidden layer is written in place
