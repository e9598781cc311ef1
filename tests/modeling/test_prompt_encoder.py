import torch

from fastsam3d.registry import build_model


def test_learned_box_prompt_adds_two_tokens():
    from dataclasses import replace

    from fastsam3d.registry import get_config

    model = build_model(replace(get_config("tiny-student"), box_embeddings=True))
    sparse, _ = model.prompt_encoder(
        (torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[1]])), torch.tensor([[0.0, 0, 0, 10, 10, 10]]), None
    )
    assert sparse.shape == (1, 3, 96)  # one click + two corners, no padding point
