import pytest
import torch

from fastsam3d.modeling.attention import Attention3D, reference_rel_pos_bias

from ..helpers import randomise


def test_rel_pos_bias_is_the_reference_form_not_the_textbook_one():
    size, channels = 4, 5
    q = torch.randn(1, size, size, size, channels)
    tables = [torch.randn(2 * size - 1, channels) for _ in range(3)]
    bias = reference_rel_pos_bias(q, *tables).view(size, size, size, size, size, size)
    qd, qh, qw, kd, kh, kw = 1, 2, 3, 0, 3, 1
    r = lambda t, delta: tables[t][delta + size - 1]  # noqa: E731
    expected = q[0, qd, qh, qw] @ r(0, qd - kw) + q[0, qd, qh, kd] @ r(1, qh - kw) + q[0, qd, qh, kh] @ r(2, kh - kw)
    textbook = q[0, qd, qh, qw] @ (r(0, qd - kd) + r(1, qh - kh) + r(2, qw - kw))
    assert torch.allclose(bias[qd, qh, qw, kd, kh, kw], expected, atol=1e-5)
    assert not torch.allclose(bias[qd, qh, qw, kd, kh, kw], textbook, atol=1e-3)


@pytest.mark.parametrize("use_rel_pos", [True, False])
def test_padded_window_shortcut_matches_literal_padding(use_rel_pos):
    attention = Attention3D(48, 4, use_rel_pos=use_rel_pos, rel_pos_size=14, window_size=14)
    randomise(attention)
    x = torch.randn(2, 8, 8, 8, 48)
    with torch.inference_mode():  # the mask is written in place
        inferred = attention(x)
    fast = attention(x)  # under autograd: the same mask, copied in
    fast.square().sum().backward()
    fast_grads = {name: p.grad.clone() for name, p in attention.named_parameters()}
    attention.zero_grad()
    attention.exact_padding = True
    literal = attention(x)
    literal.square().sum().backward()
    assert fast.shape == literal.shape == x.shape
    assert torch.allclose(fast, literal, atol=1e-4, rtol=1e-4), (fast - literal).abs().max()
    assert torch.allclose(inferred, literal, atol=1e-4, rtol=1e-4), (inferred - literal).abs().max()
    for name, p in attention.named_parameters():
        scale = p.grad.abs().max()
        assert torch.allclose(fast_grads[name], p.grad, atol=1e-4 * scale, rtol=1e-3), name


def test_window_partition_without_padding_runs_per_window():
    """A grid larger than the window is split into windows (no cross-window attention)."""
    attention = Attention3D(16, 2, rel_pos_size=4, window_size=4)
    randomise(attention)
    x = torch.randn(1, 8, 8, 8, 16)
    base = attention(x)
    changed = x.clone()
    changed[:, 4:, 4:, 4:] += 1.0  # touch only the last window
    out = attention(changed)
    assert torch.allclose(base[:, :4, :4, :4], out[:, :4, :4, :4], atol=1e-6)
    assert not torch.allclose(base[:, 4:, 4:, 4:], out[:, 4:, 4:, 4:], atol=1e-3)


def test_dilated_attention_equals_masked_global_attention():
    """Dilated attention = global attention restricted to tokens congruent modulo r, in place."""
    attention = Attention3D(32, 2, rel_pos_size=8, mode="dilated", dilation=2)
    randomise(attention)
    x = torch.randn(1, 8, 8, 8, 32)
    out = attention(x)
    q, k, v = attention._split_heads(x)
    bias = attention._bias(q, (8, 8, 8))
    coords = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) % 2
    same_group = (coords[:, None, :] == coords[None, :, :]).all(-1)
    masked = bias.masked_fill(~same_group, float("-inf"))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=masked, scale=attention.scale)
    expected = attention.proj(attention._merge_heads(expected, (8, 8, 8)))
    assert torch.allclose(out, expected, atol=1e-5)
