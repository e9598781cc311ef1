"""Our models against a fixture made with the public reference code (``fastsam3d check-reference``).

The fixture holds the reference constructor arguments, its state dict, inputs and every output
(docs/reference.md §10). :func:`check_fixture` builds the same architecture from those arguments, loads
the state dict strictly, reruns each input and returns the max absolute error per output.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import load_state_dict_strict
from .errors import FastSAM3DError
from .modeling.sam3d import Sam3DConfig
from .registry import build_model


def config_from_reference(reference: dict, block_style: str) -> Sam3DConfig:
    """Translate the reference constructor arguments stored in a fixture into a Sam3DConfig."""
    encoder, prompt, decoder = reference["image_encoder"], reference["prompt_encoder"], reference["mask_decoder"]
    transformer = decoder["hardcoded_transformer"]
    if prompt["embed_dim"] != encoder["out_chans"] or transformer["embedding_dim"] != decoder["transformer_dim"]:
        raise FastSAM3DError("fixture has mismatched encoder / prompt / decoder widths")
    return Sam3DConfig(
        name="reference-fixture",
        img_size=encoder["img_size"],
        patch_size=encoder["patch_size"],
        embed_dim=encoder["embed_dim"],
        depth=encoder["depth"],
        num_heads=encoder["num_heads"],
        mlp_ratio=encoder["mlp_ratio"],
        window_size=encoder["window_size"],
        global_attn_indexes=tuple(encoder["global_attn_indexes"]),
        skip_layer=encoder.get("skip_layer", 0),
        block_style=block_style,
        prompt_dim=prompt["embed_dim"],
        mask_in_chans=prompt["mask_in_chans"],
        num_multimask_outputs=decoder["num_multimask_outputs"],
        iou_head_depth=decoder["iou_head_depth"],
        iou_head_hidden_dim=decoder["iou_head_hidden_dim"],
        decoder_depth=transformer["depth"],
        decoder_heads=transformer["num_heads"],
        decoder_mlp_dim=transformer["mlp_dim"],
    )


def _max_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if ours.shape != theirs.shape:
        return float("inf")
    return (ours.double() - theirs.double()).abs().max().item()


@torch.no_grad()
def run_model(model, inputs: dict, cases: tuple[str, ...] = ("A", "B")) -> dict[str, torch.Tensor]:
    """All outputs our model gives for a fixture's inputs, named like the fixture's."""
    captured: list[torch.Tensor] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: captured.append(out)) for block in model.image_encoder.blocks
    ]
    embedding, features = model.image_encoder(inputs["image"], return_intermediates=True)
    for hook in hooks:
        hook.remove()
    results = {"image_embedding": embedding, "dense_pe": model.prompt_encoder.get_dense_pe()}
    results |= {f"block_outputs.{i}": t for i, t in enumerate(captured)}
    results |= {f"encoder_output_list.{i}": t for i, t in enumerate(features)}
    for case in cases:
        points = (inputs[f"{case}_point_coords"], inputs[f"{case}_point_labels"])
        sparse, dense = model.prompt_encoder(points, None, inputs[f"{case}_mask_input"])
        masks, iou = model.mask_decoder(
            embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, inputs[f"{case}_multimask_output"]
        )
        results |= {
            f"{case}.sparse_embeddings": sparse,
            f"{case}.dense_embeddings": dense,
            f"{case}.low_res_masks": masks,
            f"{case}.iou_predictions": iou,
            f"{case}.masks_full_res_logits": model.upsample(masks),
        }
    return results


def _flatten(outputs: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in outputs.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, f"{name}.")
        elif isinstance(value, list):
            flat |= {f"{name}.{i}": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)}
        elif isinstance(value, torch.Tensor):
            flat[name] = value
    return flat


def compare(ours: dict[str, torch.Tensor], expected: dict) -> dict[str, float]:
    """Max abs error per stored output that we produce."""
    return {name: _max_error(ours[name], tensor) for name, tensor in _flatten(expected).items() if name in ours}


def check_fixture(path: Path) -> dict[str, dict[str, float]]:
    """Errors per variant ("reference", and "fastsam3d_block_variant" when stored)."""
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    is_student = fixture["config"]["image_encoder"].get("skip_layer", 0) > 0
    variants = {"reference": ("fastsam3d" if is_student else "prenorm", fixture["outputs"])}
    if "fastsam3d_block_variant" in fixture:
        variants["fastsam3d_block_variant"] = ("fastsam3d", fixture["fastsam3d_block_variant"])
    report = {}
    for variant, (style, expected) in variants.items():
        model = build_model(config_from_reference(fixture["config"], style))
        load_state_dict_strict(model, fixture["state_dict"], str(path))
        cases = tuple(c for c in ("A", "B") if c in expected)
        report[variant] = compare(run_model(model, fixture["inputs"], cases), expected)
    return report
