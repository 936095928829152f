"""SAM prompt masks decoded by RankSEG instead of the official ``logit > 0`` threshold.

Two images of different sizes, three point prompts each, go through ``SamProcessor`` and
``SamModel``; ``rankseg.integration.sam.Sam1`` restores the mask probabilities in each image's
original geometry (upsample to the pad size, remove the padding, resize) and applies RankSEG.

    python examples/sam_prompt_masks.py                                   # tiny random model, offline
    python examples/sam_prompt_masks.py --checkpoint facebook/sam-vit-base   # a real checkpoint

Without ``--checkpoint`` a tiny SAM with random weights is built from a config (no download); its
masks mean nothing, so the script also decodes synthetic large logits to show RankSEG at work.
Needs ``pip install "rankseg[transformers]"`` (and ``pillow``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from rankseg.integration import sam

IMAGE_SIZES = [(480, 640), (600, 400)]  # (height, width)
POINTS = [[[[320, 240]], [[100, 100]], [[500, 400]]], [[[200, 300]], [[50, 500]], [[350, 100]]]]  # (x, y)


def tiny_sam():
    """A SamModel with random weights and a 128x128 input (a real SAM uses 1024x1024)."""
    import transformers as T

    torch.manual_seed(0)
    config = T.SamConfig(
        vision_config=T.SamVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=128,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=T.SamPromptEncoderConfig(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=T.SamMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    image_processor = T.SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    return T.SamModel(config).eval(), T.SamProcessor(image_processor=image_processor)


def load(checkpoint: str | None):
    if checkpoint is None:
        return tiny_sam()
    import transformers as T

    return T.SamModel.from_pretrained(checkpoint).eval(), T.SamProcessor.from_pretrained(checkpoint)


def describe(name: str, masks: list[torch.Tensor]) -> None:
    for i, image_masks in enumerate(masks):
        areas = image_masks.flatten(2).sum(-1).tolist()  # (P, M) foreground pixels per mask
        print(f"  {name:8s} image {i} {tuple(image_masks.shape)}: areas per prompt {areas}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a SAM checkpoint on the Hugging Face Hub (needs internet)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, processor = load(args.checkpoint)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES]
    inputs = processor(images=images, input_points=POINTS, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])
    sizes = dict(original_sizes=inputs["original_sizes"], reshaped_input_sizes=inputs["reshaped_input_sizes"])

    adapter = sam.Sam1(rankseg_kwargs={"metric": "dice"}, pad_size=processor.image_processor.pad_size)
    probs = adapter.restore_mask_probs(outputs, **sizes)  # per image: (P, M, H, W) float32
    masks = adapter.postprocess(outputs, **sizes)  # per image: (P, M, H, W) bool
    official = processor.post_process_masks(outputs.pred_masks, **sizes)  # logit > 0
    print(f"pred_masks {tuple(outputs.pred_masks.shape)} -> probabilities {[tuple(p.shape) for p in probs]}")
    describe("official", official)
    describe("RankSEG", masks)
    best = [scores.argmax(-1) for scores in outputs.iou_scores]  # pick one of the M masks per prompt
    print(f"  best mask per prompt by iou_scores: {[b.tolist() for b in best]}")

    if args.checkpoint is None:
        # Random weights give logits near 0; synthetic smooth logits show where RankSEG differs.
        torch.manual_seed(1)
        coarse = torch.randn(2 * 3, 3, 6, 6) * 3
        synthetic = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear").view(
            2, 3, 3, 32, 32
        )
        outputs = type(outputs)(iou_scores=outputs.iou_scores, pred_masks=synthetic)
        rankseg_masks = adapter.postprocess(outputs, **sizes)
        threshold_masks = processor.post_process_masks(synthetic, **sizes)
        print("synthetic logits:")
        describe("official", threshold_masks)
        describe("RankSEG", rankseg_masks)
        changed = sum(int((a != b).sum()) for a, b in zip(rankseg_masks, threshold_masks, strict=True))
        print(f"  RankSEG changed {changed} of {sum(m.numel() for m in threshold_masks)} mask pixels")


if __name__ == "__main__":
    main()
