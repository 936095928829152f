"""SegFormer semantic segmentation with RankSEG in place of the official argmax.

Everything before the last step is the usual Transformers code; only
``processor.post_process_semantic_segmentation`` (an argmax of the resized logits) is replaced by
``rankseg.integration.transformers.postprocess`` (RankSEG on the same resized maps, as
probabilities). With a real checkpoint the model and processor come from the Hub:

    checkpoint = "nvidia/segformer-b0-finetuned-ade-512-512"
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = SegformerForSemanticSegmentation.from_pretrained(checkpoint).eval()

To run offline, this example builds a tiny SegFormer with random weights from a config instead,
so its predictions mean nothing; the code path is the same. Needs the ``transformers`` extra:

    pip install "rankseg[transformers]"
    python examples/transformers_segformer.py
"""

import numpy as np
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

from rankseg.integration import transformers


def load_tiny_segformer() -> tuple[SegformerForSemanticSegmentation, SegformerImageProcessor]:
    """A 4-class SegFormer with random weights (stands in for ``from_pretrained(checkpoint)``)."""
    torch.manual_seed(0)
    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
        num_labels=4,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    # A random classifier is nearly uniform over classes; sharpen it so the maps have structure.
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(200.0)
    return model, SegformerImageProcessor(size={"height": 64, "width": 64})


def main() -> None:
    model, processor = load_tiny_segformer()
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (96, 160, 3), dtype=np.uint8),
        rng.integers(0, 256, (140, 100, 3), dtype=np.uint8),
    ]
    target_sizes = [image.shape[:2] for image in images]  # (height, width) of each original image

    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)

    # Baseline: the official post-processing, an argmax of the logits resized to each image.
    baseline = processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)

    # RankSEG: the same outputs; only the final argmax is replaced.
    preds = transformers.postprocess(
        outputs, target_sizes=target_sizes, rankseg_kwargs={"metric": "dice", "solver": "RMA"}
    )

    # The probabilities RankSEG decided on, one (classes, height, width) map per image.
    probs = transformers.restore_semantic_probs(outputs, target_sizes=target_sizes)
    # With metric="acc" RankSEG is the argmax again: the official output, pixel for pixel.
    same = transformers.postprocess(outputs, target_sizes=target_sizes, rankseg_kwargs={"metric": "acc"})

    for i, (base, pred) in enumerate(zip(baseline, preds, strict=True)):
        changed = (pred != base).float().mean().item()
        print(
            f"image {i}: probs {tuple(probs[i].shape)} -> RankSEG {tuple(pred.shape)} {pred.dtype}; "
            f"{100 * changed:.1f}% of pixels differ from the argmax; "
            f"metric='acc' equals the official output: {torch.equal(same[i], base)}"
        )


if __name__ == "__main__":
    main()
