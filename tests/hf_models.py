"""Tiny Transformers segmentation models with random weights, built from configs (no download).

Each builder returns a :class:`Case`: the outputs of a real forward pass on a batch of two images
of different sizes, the official semantic post-processing to compare with, and what the rankseg
helper needs (``model``, ``size``). Config kwargs follow the design note hf-postprocess.md, 8.1.

Random weights give nearly equal logits (|logit| ~ 1e-2), whose argmax is decided below float32
resolution once a softmax or a normalisation is applied; the builders therefore rescale the score
fields of the real outputs to a standard deviation of 2 ("injected larger logits"), which keeps
their spatial structure and makes the official argmax well defined.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np
import torch
import transformers as T

import sam_models

NUM_LABELS = 4
IMAGE_SIZES = [(48, 80), (70, 50)]  # (height, width) of the two test images


@dataclass
class Case:
    name: str
    model: Any
    outputs: Any
    target_sizes: list[tuple[int, int]]
    official: Callable[..., list]  # official post_process_semantic_segmentation(outputs, target_sizes=...)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keywords for the rankseg helper


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in IMAGE_SIZES]


def spread(outputs: Any, names: tuple[str, ...], std: float = 2.0) -> Any:
    """A copy of ``outputs`` whose fields ``names`` are rescaled to standard deviation ``std``."""
    values = dict(outputs)
    for name in names:
        values[name] = values[name] * (std / values[name].std())
    return type(outputs)(**values)


@contextlib.contextmanager
def _without_scipy_loss(module_name: str, loss_name: str):
    """Query models build their training loss (a Hungarian matcher, needing scipy) in ``__init__``;
    inference never touches it, so without scipy it is replaced by a plain placeholder object."""
    if importlib.util.find_spec("scipy") is not None:
        yield
        return

    class NoTrainingLoss:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    module = importlib.import_module(module_name)
    with mock.patch.object(module, loss_name, NoTrainingLoss):
        yield


def _forward(model: Any, inputs: Any, **extra: Any) -> Any:
    with torch.no_grad():
        return model(**inputs, **extra)


# --------------------------------------------------------------------------------------------
# Plain semantic models: outputs.logits (B, C, h, w).


def _plain(name: str, config: Any, model_cls: Any, processor: Any) -> Case:
    torch.manual_seed(0)
    model = model_cls(config).eval()
    outputs = spread(_forward(model, processor(images=images(), return_tensors="pt")), ("logits",))
    return Case(name, model, outputs, IMAGE_SIZES, processor.post_process_semantic_segmentation)


def _beit_config(cls: Any) -> Any:
    return cls(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        out_indices=[0, 1, 2, 3],
        auxiliary_channels=8,
        pool_scales=[1, 2, 3, 6],
        num_labels=NUM_LABELS,
    )


PLAIN_BUILDERS: dict[str, Callable[[], Case]] = {
    "segformer": lambda: _plain(
        "segformer",
        T.SegformerConfig(
            depths=[1, 1, 1, 1],
            sr_ratios=[8, 4, 2, 1],
            hidden_sizes=[8, 16, 32, 64],
            num_attention_heads=[1, 1, 2, 2],
            decoder_hidden_size=32,
            num_labels=NUM_LABELS,
        ),
        T.SegformerForSemanticSegmentation,
        T.SegformerImageProcessor(size={"height": 64, "width": 64}),
    ),
    "upernet": lambda: _plain(
        "upernet",
        T.UperNetConfig(
            backbone_config=T.ConvNextConfig(
                hidden_sizes=[8, 16, 32, 64],
                depths=[1, 1, 1, 1],
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
            hidden_size=16,
            auxiliary_channels=8,
            num_labels=NUM_LABELS,
        ),
        T.UperNetForSemanticSegmentation,
        T.SegformerImageProcessor(size={"height": 64, "width": 64}),
    ),
    "dpt": lambda: _plain(
        "dpt",
        T.DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=64,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            num_labels=NUM_LABELS,
        ),
        T.DPTForSemanticSegmentation,
        T.DPTImageProcessor(size={"height": 64, "width": 64}),
    ),
    "beit": lambda: _plain(
        "beit",
        _beit_config(T.BeitConfig),
        T.BeitForSemanticSegmentation,
        T.BeitImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}),
    ),
    "data2vec_vision": lambda: _plain(
        "data2vec_vision",
        _beit_config(T.Data2VecVisionConfig),
        T.Data2VecVisionForSemanticSegmentation,
        T.BeitImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64}),
    ),
    "mobilevit": lambda: _plain(
        "mobilevit",
        T.MobileViTConfig(
            image_size=64,
            hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32],
            num_attention_heads=2,
            aspp_out_channels=16,
            atrous_rates=[1, 2, 3],
            num_labels=NUM_LABELS,
            # The defaults (stride 32, init range 0.02) give exactly zero logits on 2x2 maps.
            output_stride=8,
            initializer_range=0.3,
        ),
        T.MobileViTForSemanticSegmentation,
        T.MobileViTImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
    ),
    "mobilenet_v2": lambda: _plain(
        "mobilenet_v2",
        T.MobileNetV2Config(image_size=64, depth_multiplier=0.25, num_labels=NUM_LABELS),
        T.MobileNetV2ForSemanticSegmentation,
        T.MobileNetV2ImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
    ),
}


# --------------------------------------------------------------------------------------------
# Query models: class_queries_logits (B, Q, K+1) + masks_queries_logits (B, Q, h, w).


def _swin() -> Any:
    return T.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


_QUERY_FIELDS = ("class_queries_logits", "masks_queries_logits")


def maskformer() -> Case:
    torch.manual_seed(0)
    config = T.MaskFormerConfig(
        backbone_config=_swin(),
        decoder_config={
            "model_type": "detr",
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "num_queries": 5,
        },
        fpn_feature_size=32,
        mask_feature_size=32,
        num_labels=NUM_LABELS,
    )
    with _without_scipy_loss("transformers.models.maskformer.modeling_maskformer", "MaskFormerLoss"):
        model = T.MaskFormerForInstanceSegmentation(config).eval()
    processor = T.MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    outputs = spread(_forward(model, processor(images=images(), return_tensors="pt")), _QUERY_FIELDS)
    return Case("maskformer", model, outputs, IMAGE_SIZES, processor.post_process_semantic_segmentation)


def mask2former() -> Case:
    torch.manual_seed(0)
    config = T.Mask2FormerConfig(
        backbone_config=_swin(),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=5,
        num_labels=NUM_LABELS,
    )
    with _without_scipy_loss("transformers.models.mask2former.modeling_mask2former", "Mask2FormerLoss"):
        model = T.Mask2FormerForUniversalSegmentation(config).eval()
    processor = T.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    outputs = spread(_forward(model, processor(images=images(), return_tensors="pt")), _QUERY_FIELDS)
    return Case("mask2former", model, outputs, IMAGE_SIZES, processor.post_process_semantic_segmentation)


def oneformer() -> Case:
    """OneFormer with ``OneFormerImageProcessor``, the torchvision backend (its final resize is
    antialiased; the PIL backend's is not, see the OneFormer backend test)."""
    torch.manual_seed(0)
    config = T.OneFormerConfig(
        backbone_config=_swin(),
        num_queries=5,
        num_labels=NUM_LABELS,
        conv_dim=32,
        mask_dim=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        text_encoder_width=32,
        text_encoder_num_layers=1,
        text_encoder_context_length=16,
        task_seq_len=16,
        text_encoder_vocab_size=100,
        query_dec_layers=1,
        text_encoder_n_ctx=4,
    )
    with _without_scipy_loss("transformers.models.oneformer.modeling_oneformer", "OneFormerLoss"):
        model = T.OneFormerForUniversalSegmentation(config).eval()
    processor = T.OneFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    inputs = processor(images=images(), task_inputs=["semantic"] * 2, return_tensors="pt")
    # The task text needs a CLIP tokenizer (vocabulary files); random token ids stand in for it.
    task_ids = torch.randint(0, 100, (len(IMAGE_SIZES), 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(
            pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], task_inputs=task_ids
        )
    outputs = spread(outputs, _QUERY_FIELDS)
    return Case("oneformer", model, outputs, IMAGE_SIZES, processor.post_process_semantic_segmentation)


def _eomt(name: str, **processor_kwargs: Any) -> Case:
    torch.manual_seed(0)
    config = T.EomtConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        num_blocks=2,
        num_queries=5,
        num_labels=NUM_LABELS,
        num_register_tokens=1,
        num_upscale_blocks=2,
    )
    with _without_scipy_loss("transformers.models.eomt.modeling_eomt", "EomtLoss"):
        model = T.EomtForUniversalSegmentation(config).eval()
    processor = T.EomtImageProcessor(**processor_kwargs)
    outputs = spread(_forward(model, processor(images=images(), return_tensors="pt")), _QUERY_FIELDS)
    return Case(
        name,
        model,
        outputs,
        IMAGE_SIZES,
        processor.post_process_semantic_segmentation,
        kwargs={"size": processor.size},
    )


def eomt_split() -> Case:
    """EoMT splitting each image into overlapping 64x64 patches (outputs.patch_offsets is set)."""
    return _eomt("eomt_split", size={"shortest_edge": 64, "longest_edge": None}, do_split_image=True)


def eomt_pad() -> Case:
    """EoMT resizing the long side to 64 and padding to 64x64 (no patch_offsets)."""
    return _eomt("eomt_pad", size={"shortest_edge": 64, "longest_edge": 64}, do_pad=True)


# --------------------------------------------------------------------------------------------
# DETR-style heads: logits (B, Q, K[+1]) + pred_masks (B, Q, h, w).


def _detr(name: str, config_cls: Any, model_cls: Any, processor_cls: Any) -> Case:
    torch.manual_seed(0)
    resnet = T.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = config_cls(
        backbone_config=resnet,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=NUM_LABELS,
    )
    model = model_cls(config).eval()
    processor = processor_cls(size={"shortest_edge": 64, "longest_edge": 128})
    outputs = spread(
        _forward(model, processor(images=images(), return_tensors="pt")), ("logits", "pred_masks")
    )
    return Case(name, model, outputs, IMAGE_SIZES, processor.post_process_semantic_segmentation)


def detr() -> Case:
    return _detr("detr", T.DetrConfig, T.DetrForSegmentation, T.DetrImageProcessor)


def conditional_detr() -> Case:
    return _detr(
        "conditional_detr",
        T.ConditionalDetrConfig,
        T.ConditionalDetrForSegmentation,
        T.ConditionalDetrImageProcessor,
    )


# --------------------------------------------------------------------------------------------
# SAM3 semantic_seg (B, 1, h, w). Its image processor exists only with torchvision.


def sam3() -> Case:
    """SAM3 ``semantic_seg`` (B, 1, h, w): the tiny Sam3Model of the SAM tests and its official
    ``Sam3ImageProcessor`` (torchvision backend)."""
    case = sam_models.build_sam3()
    outputs = spread(case.outputs, ("semantic_seg",))
    return Case("sam3", case.model, outputs, IMAGE_SIZES, case.processor.post_process_semantic_segmentation)


BUILDERS: dict[str, Callable[[], Case]] = {
    **PLAIN_BUILDERS,
    "maskformer": maskformer,
    "mask2former": mask2former,
    "oneformer": oneformer,
    "eomt_split": eomt_split,
    "eomt_pad": eomt_pad,
    "detr": detr,
    "conditional_detr": conditional_detr,
    "sam3": sam3,
}
