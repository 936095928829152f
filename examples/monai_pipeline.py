"""A MONAI inference pipeline with RankSEG in place of the argmax.

The usual MONAI code: ``sliding_window_inference`` on a collated batch, ``decollate_batch``, then
post transforms per item. Only the discretisation changes:

    AsDiscreted(keys="pred", argmax=True)            ->  RankSEGd(keys="pred", metric="dice")
    AsDiscrete(argmax=True, to_onehot=3)  (metrics)  ->  RankSEG(metric="dice", to_onehot=3)

To run offline and on a CPU in seconds, the data are synthetic volumes (two spheres, classes 1 and
2, in noise) held as ``MetaTensor``s with rotated, anisotropic affines, and the model is a tiny 3-D
``UNet`` trained for a few dozen steps here; with your own data and checkpoint only the loading
changes. Needs the ``monai`` extra (and nibabel, which SaveImaged uses for NIfTI):

    pip install "rankseg[monai,nifti]"
    python examples/monai_pipeline.py [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import Activations, Activationsd, AsDiscrete, Compose, SaveImaged
from torch import Tensor

from rankseg.integration.monai import RankSEG, RankSEGd

CLASSES = 3  # background, sphere 1, sphere 2


def synthetic_volume(shape: tuple[int, int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """An image ``(1, *shape)`` (labels plus Gaussian noise) and its label map ``(1, *shape)``."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij"))
    labels = torch.zeros(shape, dtype=torch.int64)
    for cls in (1, 2):
        centre = torch.tensor([float(torch.randint(6, s - 6, (1,), generator=generator)) for s in shape])
        radius = 3.0 + 3.0 * float(torch.rand(1, generator=generator))
        labels[((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0) <= radius**2] = cls
    image = labels.to(torch.float32) + 0.8 * torch.randn(shape, generator=generator)
    return image[None], labels[None]


def rotation_affine(angle: float, spacing: tuple[float, float, float], origin: tuple[float, float, float]):
    """A voxel-to-world affine: anisotropic spacing, then a rotation about the third axis."""
    cos, sin = math.cos(angle), math.sin(angle)
    affine = torch.eye(4, dtype=torch.float64)
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    affine[:3, :3] = rotation @ torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return affine


def train_tiny_unet(generator: torch.Generator, steps: int = 40) -> tuple[UNet, float]:
    """A small 3-D UNet fitted to synthetic volumes (stands in for loading your checkpoint)."""
    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=CLASSES, channels=(8, 16), strides=(2,), num_res_units=1
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    for _ in range(steps):
        images, labels = zip(*(synthetic_volume((32, 32, 24), generator) for _ in range(2)), strict=True)
        loss = loss_function(net(torch.stack(images)), torch.stack(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return net.eval(), float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where SaveImaged writes (default: a temp dir)"
    )
    args = parser.parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="rankseg-monai-"))

    generator = torch.Generator().manual_seed(0)
    net, loss = train_tiny_unet(generator)
    print(f"trained a tiny 3-D UNet for 40 steps (DiceCE loss {loss:.2f})")

    # Two cases, as LoadImaged would give them: channel-first MetaTensors with their own geometry.
    cases = []
    for index, affine in enumerate(
        [
            rotation_affine(0.3, (1.5, 1.0, 2.0), (10.0, -5.0, 3.0)),
            rotation_affine(-0.7, (0.8, 0.9, 1.2), (0.0, 2.0, 1.0)),
        ]
    ):
        image, labels = synthetic_volume((48, 40, 32), generator)
        meta = {"filename_or_obj": f"case{index}.nii.gz"}
        cases.append({"image": MetaTensor(image, affine=affine, meta=meta), "label": labels})

    batch = list_data_collate(cases)
    with torch.no_grad():
        batch["pred"] = sliding_window_inference(
            batch["image"], roi_size=(32, 32, 24), sw_batch_size=4, predictor=net
        )
    items = decollate_batch(batch)

    # Saving: RankSEGd where AsDiscreted(keys="pred", argmax=True) would be.
    save = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            RankSEGd(keys="pred", metric="dice"),
            SaveImaged(
                keys="pred",
                output_dir=output_dir,
                output_postfix="rankseg",
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    # Scoring: the usual one-hot post transforms; RankSEG where AsDiscrete(argmax=True, to_onehot=N) was.
    to_probs = Activations(softmax=True)
    argmax_onehot = AsDiscrete(argmax=True, to_onehot=CLASSES)
    rankseg_onehot = RankSEG(metric="dice", to_onehot=CLASSES)
    label_onehot = AsDiscrete(to_onehot=CLASSES)
    dice = {"argmax": DiceMetric(include_background=False), "RankSEG": DiceMetric(include_background=False)}

    for item in items:
        probs = to_probs(item["pred"])
        label = label_onehot(item["label"])
        dice["argmax"](y_pred=[argmax_onehot(probs)], y=[label])
        dice["RankSEG"](y_pred=[rankseg_onehot(probs)], y=[label])
        save(item)

    for name, metric in dice.items():
        print(f"{name:<8} mean Dice over classes 1-2 and both cases: {metric.aggregate().item():.4f}")
    for case in cases:
        stem = Path(case["image"].meta["filename_or_obj"]).name.removesuffix(".nii.gz")
        saved = nib.load(output_dir / f"{stem}_rankseg.nii.gz")
        same_affine = np.allclose(saved.affine, case["image"].affine.numpy(), atol=1e-5)
        print(f"saved {saved.get_filename()} {saved.shape}, affine equals the input's: {same_affine}")


if __name__ == "__main__":
    main()
