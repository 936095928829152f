"""Adapters that restore probability maps from model outputs and hand them to RankSEG.

``transformers`` (Hugging Face semantic/universal segmentation outputs) and ``sam`` (the SAM
family's prompt and instance masks). Both need the optional ``transformers`` dependency only for
the model objects you already have; importing ``rankseg`` never imports ``transformers``.
``monai`` (RankSEG as MONAI post-processing transforms) and ``nnunet`` (nnU-Net prediction
folders) need the ``monai`` / ``nnunet`` extras; they load on first access and are left out of
``__all__``, so ``from rankseg.integration import *`` works without them.
"""

__all__ = ["sam", "transformers"]
_SUBMODULES = (*__all__, "monai", "nnunet")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
