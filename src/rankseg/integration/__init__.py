"""Adapters that restore probability maps from model outputs and hand them to RankSEG.

``transformers`` (Hugging Face semantic/universal segmentation outputs) and ``sam`` (the SAM
family's prompt and instance masks). Both need the optional ``transformers`` dependency only for
the model objects you already have; importing ``rankseg`` never imports ``transformers``.
``nnunet`` (nnU-Net prediction folders) needs the ``nnunet`` extra and is imported only when used.
"""

__all__ = ["nnunet", "sam", "transformers"]


def __getattr__(name: str):
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
