"""Tiny SAM video models with random weights (built from configs, no download), their official
processors, and short synthetic clips run through inference sessions, for
``tests/test_integration_sam_video.py`` and ``examples/sam_video.py``.

Every model tracks objects through two clips of three frames, (48, 80) and (70, 50) pixels, one
inference session per clip (a session has one frame size). The tracker models (SAM2 video,
Sam3Tracker video, EdgeTAM video) get point prompts on the first clip and box prompts on the
second; SAM3 video gets two text prompts, tokenised by a small word-level stand-in tokenizer (no
CLIP vocabulary can be downloaded).

Random weights give useless masks: the object-score heads declare every object absent (masks
become -1024) and mask logits are ~1e-4. :func:`_sharpen` makes objects present and scales the mask
logits to ~1, so that thresholds and RankSEG act on real geometry. Config constraints found while
building these (design note ``integration-notes.md``): ``memory_encoder_output_channels`` must be
64, the FPN width a multiple of 64 above 64, SAM3 vision needs four scale factors (the tracker
drops the last level), and ``Sam3TrackerVideoConfig`` needs ``image_size`` (its default 1008
overwrites the feature sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

WIDTH = 128  # FPN / decoder width
CLIP_SIZES = [(48, 80), (70, 50)]  # (height, width) of the two clips
NUM_FRAMES = 3
TRACKERS = ("sam2_video", "sam3_tracker_video", "edgetam_video")
TEXT_PROMPTS = ["cat", "a dog"]
# Tracker prompts on frame 0, in pixels of each clip: points (two objects, ragged) on clip 0,
# boxes on clip 1.
POINT_PROMPTS = dict(
    obj_ids=[1, 2], input_points=[[[[20, 10], [60, 30]], [[40, 35]]]], input_labels=[[[1, 0], [1]]]
)
BOX_PROMPTS = dict(obj_ids=[4, 9], input_boxes=[[[5, 10, 30, 40], [20, 30, 45, 65]]])


@dataclass
class ClipRun:
    """One clip tracked in one inference session: every frame's output, in the order yielded."""

    size: tuple[int, int]
    session: Any
    outputs: list[Any] = field(default_factory=list)


@dataclass
class VideoCase:
    name: str
    model: Any
    processor: Any
    clips: list[ClipRun]


# --------------------------------------------------------------------------------------------------
# Configs


def _video_memory(image_tokens: int) -> dict:
    """Memory-attention, memory-encoder and fuser kwargs shared by the tracker configs."""
    return dict(
        num_maskmem=2,
        memory_attention_hidden_size=WIDTH,
        memory_attention_num_layers=1,
        memory_attention_rope_feat_sizes=[image_tokens, image_tokens],
        memory_encoder_hidden_size=WIDTH,
        memory_encoder_output_channels=64,  # hard-coded elsewhere in the trackers
        mask_downsampler_embed_dim=WIDTH,
        memory_fuser_embed_dim=WIDTH,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )


def _prompt_and_decoder(image_size: int, patch_size: int) -> dict:
    return dict(
        prompt_encoder_config=dict(
            hidden_size=WIDTH, image_size=image_size, patch_size=patch_size, mask_input_channels=8
        ),
        mask_decoder_config=dict(
            hidden_size=WIDTH, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32
        ),
    )


def _hiera_vision(image_size: int):
    import transformers as T

    hiera = T.Sam2HieraDetConfig(
        hidden_size=12,
        image_size=image_size,
        patch_stride=4,
        patch_kernel_size=7,
        patch_padding=3,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
    )
    s = image_size // 4
    return T.Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[s, s], [s // 2, s // 2], [s // 4, s // 4]],
        fpn_hidden_size=WIDTH,
    )


def _sam3_vision(image_size: int):
    import transformers as T

    tokens = image_size // 14
    vit = T.Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=image_size,
        patch_size=14,
        window_size=4,
        global_attn_indexes=[1],
    )
    return T.Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=WIDTH,
        scale_factors=[4.0, 2.0, 1.0, 0.5],  # the tracker drops the last level
        backbone_feature_sizes=[[4 * tokens] * 2, [2 * tokens] * 2, [tokens] * 2],
    )


def _sam3_tracker_config(image_size: int):
    import transformers as T

    return T.Sam3TrackerVideoConfig(
        vision_config=_sam3_vision(image_size),
        image_size=image_size,  # the default, 1008, would overwrite the feature sizes
        memory_attention_feed_forward_hidden_size=64,
        **_prompt_and_decoder(image_size, 14),
        **_video_memory(image_size // 14),
    )


def _sharpen(model):
    """Every object present (object-score bias +20) and mask logits ~1 instead of ~1e-4."""
    decoder = model.mask_decoder
    with torch.no_grad():
        decoder.pred_obj_score_head.proj_out.bias.fill_(20.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1000.0)
    return model


# --------------------------------------------------------------------------------------------------
# Models


def build_sam2_video(image_size: int = 128):
    import transformers as T

    torch.manual_seed(10)
    config = T.Sam2VideoConfig(
        vision_config=_hiera_vision(image_size),
        image_size=image_size,
        memory_attention_feed_forward_hidden_size=64,
        **_prompt_and_decoder(image_size, 16),
        **_video_memory(image_size // 16),
    )
    return _sharpen(T.Sam2VideoModel(config).eval())


def build_edgetam_video(image_size: int = 128):
    import transformers as T

    torch.manual_seed(11)
    config = T.EdgeTamVideoConfig(
        vision_config=_hiera_vision(image_size),
        image_size=image_size,
        memory_attention_mlp_hidden_size=64,
        memory_attention_rope_k_sizes=[4, 4],
        perceiver_resampler_num_latents=16,
        perceiver_resampler_num_latents_2d=16,
        perceiver_resampler_mlp_intermediate_size=64,
        perceiver_resampler_num_layers=1,
        **_prompt_and_decoder(image_size, 16),
        **_video_memory(image_size // 16),
    )
    return _sharpen(T.EdgeTamVideoModel(config).eval())


def build_sam3_tracker_video(image_size: int = 112):
    import transformers as T

    torch.manual_seed(12)
    return _sharpen(T.Sam3TrackerVideoModel(_sam3_tracker_config(image_size)).eval())


def build_sam3_video(image_size: int = 112, hotstart_delay: int = 2):
    """Tiny Sam3VideoModel: 5 detector queries per prompt, detections kept above 0.25 (the random
    detector scores ~0.25), detection masks scaled like the tracker's, a hot start of two frames
    (objects unmatched by detections for ``hotstart_delay`` frames are removed)."""
    import transformers as T

    torch.manual_seed(13)
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=32,  # Sam3VideoProcessor pads prompts to 32 tokens
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    detector = T.Sam3Config(
        vision_config=_sam3_vision(image_size),
        text_config=text,
        geometry_encoder_config=dict(
            hidden_size=WIDTH, num_layers=1, num_attention_heads=4, intermediate_size=64
        ),
        detr_encoder_config=dict(
            hidden_size=WIDTH, num_layers=1, num_attention_heads=4, intermediate_size=64
        ),
        detr_decoder_config=dict(
            hidden_size=WIDTH, num_layers=1, num_queries=5, num_attention_heads=4, intermediate_size=64
        ),
        mask_decoder_config=dict(hidden_size=WIDTH, num_upsampling_stages=2),
    )
    config = T.Sam3VideoConfig(
        detector_config=detector,
        tracker_config=_sam3_tracker_config(image_size),
        low_res_mask_size=4 * (image_size // 14),
        score_threshold_detection=0.25,
        new_det_thresh=0.25,
        hotstart_delay=hotstart_delay,
        hotstart_unmatch_thresh=hotstart_delay,
        hotstart_dup_thresh=min(hotstart_delay, 1),
    )
    model = T.Sam3VideoModel(config).eval()
    _sharpen(model.tracker_model)
    with torch.no_grad():
        model.detector_model.mask_decoder.instance_projection.weight.mul_(100.0)
        model.detector_model.mask_decoder.instance_projection.bias.mul_(100.0)
    return model


# --------------------------------------------------------------------------------------------------
# Processors


def tiny_tokenizer():
    """A word-level stand-in for SAM3's CLIP tokenizer (whose vocabulary cannot be downloaded)."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2, "a": 3, "cat": 4, "dog": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")


def processor_for(name: str, image_size: int):
    """The official processor of each model family, sized for the tiny model."""
    import transformers as T

    size = {"height": image_size, "width": image_size}
    video_processor = T.Sam2VideoVideoProcessor(size=size)
    if name == "sam3_video":
        return T.Sam3VideoProcessor(
            image_processor=T.Sam3ImageProcessor(size=size),
            video_processor=video_processor,
            tokenizer=tiny_tokenizer(),
        )
    if name == "sam3_tracker_video":
        return T.Sam3TrackerVideoProcessor(
            image_processor=T.Sam3ImageProcessor(size=size), video_processor=video_processor
        )
    # EdgeTAM video has no processor of its own; its docs use Sam2VideoProcessor
    return T.Sam2VideoProcessor(
        image_processor=T.Sam2ImageProcessor(size=size), video_processor=video_processor
    )


# --------------------------------------------------------------------------------------------------
# Clips and sessions


def synthetic_clip(size: tuple[int, int], num_frames: int = NUM_FRAMES, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames: a bright disc moving right over noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    frames = rng.integers(0, 80, (num_frames, height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    for t in range(num_frames):
        disc = (rows - height / 2) ** 2 + (cols - width / 3 - 4 * t) ** 2 < (min(size) / 4) ** 2
        frames[t][disc] = 220
    return frames


def start_session(name: str, processor: Any, clip_index: int):
    """A fresh inference session on clip ``clip_index`` with its prompts added on frame 0."""
    video = synthetic_clip(CLIP_SIZES[clip_index], seed=clip_index)
    session = processor.init_video_session(video=video, inference_device="cpu")
    if name == "sam3_video":
        processor.add_text_prompt(session, list(TEXT_PROMPTS))
        return session
    prompts = POINT_PROMPTS if clip_index == 0 else BOX_PROMPTS
    # add_inputs_to_inference_session keeps (and later empties) the obj_ids list: pass a copy
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, **{**prompts, "obj_ids": list(prompts["obj_ids"])}
    )
    return session


def run_case(name: str) -> VideoCase:
    """Build the model and track both clips, each in its own session."""
    model = globals()[f"build_{name}"]()
    processor = processor_for(name, model.config.image_size)
    clips = []
    for index, size in enumerate(CLIP_SIZES):
        if name == "sam3_video":
            # clip 0: objects unmatched once are removed at hot start, so the official code hides
            # them (frames 0 and 1 show nothing); clip 1: none removed, up to 12 objects per frame
            model.hotstart_unmatch_thresh = 1 if index == 0 else model.config.hotstart_unmatch_thresh
        session = start_session(name, processor, index)
        run = ClipRun(size, session)
        with torch.inference_mode():
            for outputs in model.propagate_in_video_iterator(inference_session=session, start_frame_idx=0):
                run.outputs.append(outputs)
        clips.append(run)
    return VideoCase(name, model, processor, clips)
