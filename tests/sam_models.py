"""Tiny SAM-family models with random weights (built from configs, no download) and the official
post-processors, for ``tests/test_integration_sam.py``.

Configs follow ``shared/design/hf-postprocess.md`` section 8.1. Every case is a batch of two images
of different original sizes, (48, 80) and (70, 50), with three single-point prompts per image, run
through the official processors: ``SamProcessor``, ``Sam2Processor`` (SAM2, EdgeTAM),
``Sam3TrackerProcessor`` and ``Sam3ImageProcessor``. The last three exist only as torchvision
backends, so these tests need torchvision (a test dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IMAGE_SIZES = [(48, 80), (70, 50)]  # (height, width) of the two original images
# (batch=2, point_batch=3, points_per_prompt=1, xy) in original-image pixels, all foreground points
POINTS = [[[[10, 20]], [[30, 5]], [[40, 40]]], [[[5, 5]], [[20, 60]], [[45, 10]]]]
LABELS = [[[1], [1], [1]], [[1], [1], [1]]]


@dataclass
class SamCase:
    """One forward pass of a tiny model and what its post-processing needs."""

    outputs: Any
    original_sizes: torch.Tensor  # (2, 2) int64, as processors return it
    reshaped_input_sizes: torch.Tensor | None = None  # SAM1 only
    processor: Any = None  # the official image processor
    model: Any = None


def _images() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES]


def build_sam(hq: bool = False) -> SamCase:
    """Tiny SamModel / SamHQModel run through SamProcessor / SamHQProcessor (longest side 128, padded
    to 128x128, so the reshaped sizes (77, 128) and (128, 91) leave real padding to remove)."""
    import transformers as T

    torch.manual_seed(1 if hq else 0)
    vision = (T.SamHQVisionConfig if hq else T.SamVisionConfig)(
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
    )
    prompt = (T.SamHQPromptEncoderConfig if hq else T.SamPromptEncoderConfig)(
        hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4
    )
    decoder_kwargs = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    decoder = (
        T.SamHQMaskDecoderConfig(vit_dim=32, **decoder_kwargs)
        if hq
        else T.SamMaskDecoderConfig(**decoder_kwargs)
    )
    config = (T.SamHQConfig if hq else T.SamConfig)(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    model = (T.SamHQModel if hq else T.SamModel)(config).eval()
    image_processor = T.SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    processor = (T.SamHQProcessor if hq else T.SamProcessor)(image_processor=image_processor)
    inputs = processor(images=_images(), input_points=POINTS, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"])
    return SamCase(outputs, inputs["original_sizes"], inputs["reshaped_input_sizes"], image_processor)


def build_sam2() -> SamCase:
    """Tiny Sam2Model on a 128x128 squashed input, run through ``Sam2Processor``."""
    import transformers as T

    torch.manual_seed(2)
    hiera = T.Sam2HieraDetConfig(
        hidden_size=12,
        image_size=128,
        patch_stride=4,
        patch_kernel_size=7,
        patch_padding=3,
        blocks_per_stage=[1, 2, 7, 2],
        embed_dim_per_stage=[12, 24, 48, 96],
    )
    config = T.Sam2Config(
        vision_config=T.Sam2VisionConfig(
            backbone_config=hiera,
            backbone_channel_list=[96, 48, 24, 12],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=T.Sam2PromptEncoderConfig(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8
        ),
        mask_decoder_config=T.Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32
        ),
    )
    model = T.Sam2Model(config).eval()
    return _run_prompt_model(model, T.Sam2Processor(image_processor=T.Sam2ImageProcessor(size=_square(128))))


def _square(side: int) -> dict[str, int]:
    return {"height": side, "width": side}


def _run_prompt_model(model: Any, processor: Any) -> SamCase:
    """Images and point prompts through the official ``processor``, then ``model``: SAM2-style
    processors squash each image to the model's square input and rescale the points."""
    inputs = processor(images=_images(), input_points=POINTS, input_labels=LABELS, return_tensors="pt")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
        )
    return SamCase(outputs, inputs["original_sizes"], None, processor.image_processor, model)


def build_edgetam() -> SamCase:
    """Tiny EdgeTamModel: its real backbone architecture (timm ``repvit_m1``, random weights, no
    download) under a small prompt encoder and mask decoder, run through ``Sam2Processor``."""
    import transformers as T

    torch.manual_seed(5)
    backbone = T.TimmWrapperConfig(
        architecture="repvit_m1",
        model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]},
    )
    config = T.EdgeTamConfig(
        vision_config=T.EdgeTamVisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[384, 192, 96, 48],  # repvit_m1's feature channels, deepest first
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],  # strides 4, 8, 16 of a 128 input
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=T.EdgeTamPromptEncoderConfig(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8
        ),
        mask_decoder_config=T.EdgeTamMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32
        ),
    )
    model = T.EdgeTamModel(config).eval()
    return _run_prompt_model(model, T.Sam2Processor(image_processor=T.Sam2ImageProcessor(size=_square(128))))


def _sam3_vit():
    import transformers as T

    return T.Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=224,
        patch_size=14,
        window_size=8,
        global_attn_indexes=[0, 1],
    )


def build_sam3_tracker() -> SamCase:
    """Tiny Sam3TrackerModel on a 224x224 squashed input; official post-processing is
    ``Sam3ImageProcessor.post_process_masks``."""
    import transformers as T

    torch.manual_seed(3)
    config = T.Sam3TrackerConfig(
        vision_config=T.Sam3VisionConfig(
            backbone_config=_sam3_vit(),
            fpn_hidden_size=32,
            scale_factors=[2.0, 1.0, 0.5],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        # image_size / patch_size must equal the smallest feature size (8)
        prompt_encoder_config=T.Sam3TrackerPromptEncoderConfig(
            hidden_size=32, image_size=224, patch_size=28, mask_input_channels=8
        ),
        mask_decoder_config=T.Sam3TrackerMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32
        ),
    )
    model = T.Sam3TrackerModel(config).eval()
    return _run_prompt_model(
        model, T.Sam3TrackerProcessor(image_processor=T.Sam3ImageProcessor(size=_square(224)))
    )


def build_sam3() -> SamCase:
    """Tiny Sam3Model (5 queries, 32x32 masks) on a 224x224 squashed input with random text ids."""
    import transformers as T

    torch.manual_seed(4)
    text = dict(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    config = T.Sam3Config(
        vision_config=T.Sam3VisionConfig(
            backbone_config=_sam3_vit(), fpn_hidden_size=32, scale_factors=[2.0, 1.0]
        ),
        text_config=text,
        geometry_encoder_config=T.Sam3GeometryEncoderConfig(
            hidden_size=32, num_layers=1, num_attention_heads=4, intermediate_size=64
        ),
        detr_encoder_config=T.Sam3DETREncoderConfig(
            hidden_size=32, num_layers=1, num_attention_heads=4, intermediate_size=64
        ),
        detr_decoder_config=T.Sam3DETRDecoderConfig(
            hidden_size=32, num_layers=1, num_queries=5, num_attention_heads=4, intermediate_size=64
        ),
        mask_decoder_config=T.Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )
    model = T.Sam3Model(config).eval()
    # Sam3Processor also tokenizes the text prompt with a CLIP tokenizer, whose vocabulary files
    # cannot be downloaded here: the images go through its image processor, random ids stand in.
    processor = T.Sam3ImageProcessor(size=_square(224))
    inputs = processor(images=_images(), return_tensors="pt")
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"],
            input_ids=torch.randint(2, 1000, (2, 16)),
            attention_mask=torch.ones(2, 16, dtype=torch.long),
        )
    return SamCase(outputs, inputs["original_sizes"], None, processor, model)
