"""SAM video tracking decoded by RankSEG on every frame, instead of the official ``logit > 0``.

Two parts, each on a short synthetic clip (a bright disc moving over noise):

1. A SAM2 video tracker follows two objects prompted with points on frame 0;
   ``sam.Sam2(...).propagate(model, inference_session)`` yields RankSEG masks for every frame.
2. SAM3 video finds and tracks the objects of two text prompts; ``sam.Sam3(...).propagate``
   yields, per frame, what ``Sam3VideoProcessor.postprocess_outputs`` returns (object ids, scores,
   boxes, masks), with RankSEG masks.

Each frame is also post-processed by the official code, and the foreground areas are printed side
by side.

    python examples/sam_video.py                                          # tiny random models, offline
    python examples/sam_video.py --sam2 facebook/sam2.1-hiera-tiny --sam3 facebook/sam3   # real ones

Without checkpoints, tiny models with random weights are built from configs (no download): their
masks mean nothing, but every step runs as with a real model. Needs
``pip install "rankseg[transformers]"`` and torchvision (the SAM video processors use it).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rankseg.integration import sam

CLIP_SIZE = (60, 90)  # (height, width) of the synthetic clip
NUM_FRAMES = 4
POINTS = dict(obj_ids=[1, 2], input_points=[[[[30, 30]], [[70, 20]]]], input_labels=[[[1], [1]]])  # (x, y)
TEXT_PROMPTS = ["cat", "a dog"]


def synthetic_clip() -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames: a bright disc moving right over dark noise."""
    rng = np.random.default_rng(0)
    height, width = CLIP_SIZE
    frames = rng.integers(0, 80, (NUM_FRAMES, height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    for t in range(NUM_FRAMES):
        frames[t][(rows - height / 2) ** 2 + (cols - width / 3 - 5 * t) ** 2 < (height / 4) ** 2] = 220
    return frames


# --------------------------------------------------------------------------------------------------
# Tiny models (random weights; a real SAM2 video model uses 1024x1024 inputs, SAM3 1008x1008)


def _memory_kwargs(tokens: int) -> dict:
    return dict(
        num_maskmem=2,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[tokens, tokens],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )


def _heads(image_size: int, patch_size: int) -> dict:
    return dict(
        prompt_encoder_config=dict(hidden_size=128, image_size=image_size, patch_size=patch_size),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32),
    )


def _present_and_sharp(model):
    """Random object-score heads call every object absent, and random mask logits are ~1e-4:
    make objects present and logits ~1, so the masks have some shape."""
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(20.0)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1000.0)
    return model


def tiny_sam2_video():
    import transformers as T

    torch.manual_seed(0)
    hiera = T.Sam2HieraDetConfig(
        hidden_size=12, image_size=128, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[12, 24, 48, 96]
    )
    vision = T.Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=128,
    )
    config = T.Sam2VideoConfig(vision_config=vision, image_size=128, **_heads(128, 16), **_memory_kwargs(8))
    size = {"height": 128, "width": 128}
    processor = T.Sam2VideoProcessor(
        image_processor=T.Sam2ImageProcessor(size=size), video_processor=T.Sam2VideoVideoProcessor(size=size)
    )
    return _present_and_sharp(T.Sam2VideoModel(config).eval()), processor


def tiny_sam3_video():
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(1)
    image_size, tokens = 112, 8  # 112 / patch 14
    vit = T.Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=image_size,
        window_size=4,
        global_attn_indexes=[1],
    )
    vision = T.Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=128,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        backbone_feature_sizes=[[4 * tokens] * 2, [2 * tokens] * 2, [tokens] * 2],
    )
    small = dict(hidden_size=128, num_layers=1, num_attention_heads=4, intermediate_size=64)
    detector = T.Sam3Config(
        vision_config=vision,
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        geometry_encoder_config=small,
        detr_encoder_config=small,
        detr_decoder_config={**small, "num_queries": 5},
        mask_decoder_config=dict(hidden_size=128, num_upsampling_stages=2),
    )
    tracker = T.Sam3TrackerVideoConfig(
        vision_config=vision, image_size=image_size, **_heads(image_size, 14), **_memory_kwargs(tokens)
    )
    config = T.Sam3VideoConfig(
        detector_config=detector,
        tracker_config=tracker,
        low_res_mask_size=4 * tokens,
        score_threshold_detection=0.25,  # random detector scores are ~0.25
        new_det_thresh=0.25,
        hotstart_delay=0,
    )
    model = T.Sam3VideoModel(config).eval()
    _present_and_sharp(model.tracker_model)
    with torch.no_grad():
        model.detector_model.mask_decoder.instance_projection.weight.mul_(100.0)
    # SAM3's CLIP vocabulary cannot be downloaded offline: a word-level stand-in tokenizer
    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2, "a": 3, "cat": 4, "dog": 5}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>")
    size = {"height": image_size, "width": image_size}
    processor = T.Sam3VideoProcessor(
        image_processor=T.Sam3ImageProcessor(size=size),
        video_processor=T.Sam2VideoVideoProcessor(size=size),
        tokenizer=tokenizer,
    )
    return model, processor


def load(family: str, checkpoint: str | None):
    import transformers as T

    if checkpoint is None:
        return tiny_sam2_video() if family == "sam2" else tiny_sam3_video()
    model_class, processor_class = (
        (T.Sam2VideoModel, T.Sam2VideoProcessor)
        if family == "sam2"
        else (T.Sam3VideoModel, T.Sam3VideoProcessor)
    )
    return model_class.from_pretrained(checkpoint).eval(), processor_class.from_pretrained(checkpoint)


# --------------------------------------------------------------------------------------------------


def start_point_session(processor, video):
    session = processor.init_video_session(video=video, inference_device="cpu")
    # add_inputs_to_inference_session keeps (and later empties) the obj_ids list it gets: pass a copy
    processor.add_inputs_to_inference_session(
        session, frame_idx=0, **{**POINTS, "obj_ids": list(POINTS["obj_ids"])}
    )
    return session


def track_with_points(model, processor, video) -> None:
    adapter = sam.Sam2(rankseg_kwargs={"metric": "dice"})
    print(f"SAM2 video, objects {POINTS['obj_ids']} prompted with points on frame 0")
    session = start_point_session(processor, video)
    for frame in adapter.propagate(model, session, start_frame_idx=0):  # one dict per frame
        areas = frame["masks"].flatten(1).sum(1).tolist()  # masks: (objects, 1, H, W) bool
        print(f"  frame {frame['frame_idx']}: objects {frame['object_ids']}, RankSEG areas {areas}")

    print("the same loop written out, the official decoding (logit > 0) beside RankSEG:")
    session = start_point_session(processor, video)
    for outputs in model.propagate_in_video_iterator(session, start_frame_idx=0):
        probs = adapter.restore_mask_probs(outputs, inference_session=session)["mask_probs"]
        masks = adapter.postprocess(outputs, inference_session=session)["masks"]
        size = [(int(session.video_height), int(session.video_width))]
        official = processor.post_process_masks([outputs.pred_masks], size)[0]
        print(
            f"  frame {outputs.frame_idx}: probabilities {tuple(probs.shape)}, areas official "
            f"{official.flatten(1).sum(1).tolist()} RankSEG {masks.flatten(1).sum(1).tolist()}"
        )


def track_text_prompts(model, processor, video) -> None:
    session = processor.init_video_session(video=video, inference_device="cpu")
    processor.add_text_prompt(session, TEXT_PROMPTS)
    adapter = sam.Sam3(rankseg_kwargs={"metric": "iou"})
    print(f"SAM3 video, text prompts {TEXT_PROMPTS}")
    for outputs in model.propagate_in_video_iterator(inference_session=session):
        frame = adapter.postprocess_video(session, outputs)
        official = processor.postprocess_outputs(session, outputs)  # masks: logit > 0
        print(
            f"  frame {frame['frame_idx']}: objects {frame['object_ids'].tolist()} "
            f"(official {official['object_ids'].tolist()}), by prompt {frame['prompt_to_obj_ids']}, "
            f"RankSEG areas {frame['masks'].flatten(1).sum(1).tolist()}, "
            f"first box {frame['boxes'][:1].tolist()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam2", help="a SAM2 video checkpoint on the Hugging Face Hub (needs internet)")
    parser.add_argument("--sam3", help="a SAM3 checkpoint on the Hugging Face Hub (needs internet)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    video = synthetic_clip()
    track_with_points(*load("sam2", args.sam2), video)
    track_text_prompts(*load("sam3", args.sam3), video)


if __name__ == "__main__":
    main()
