"""Official torchvision-only transformers image processors, without torchvision (tests only).

``Sam2ImageProcessor`` and ``Sam3ImageProcessor`` exist only as torchvision backends, and no CPU
build of torchvision can be installed here. :func:`official_processor` imports such a module with
throw-away stub modules named ``torchvision...`` that live in ``sys.modules`` only during that
import (design note ``hf-postprocess.md`` 8.2); the post-processing methods use only
``torch.nn.functional`` and are called on an uninitialised instance. Nothing of this reaches the
package.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from typing import Any

_NAMES = [
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.boxes",
    "torchvision.transforms",
    "torchvision.transforms.v2",
    "torchvision.transforms.v2.functional",
]


def torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA wheel that fails against CPU torch
        return False
    return True


@contextlib.contextmanager
def _stubs():
    if any(name in sys.modules for name in _NAMES):
        raise RuntimeError("a torchvision module is already imported; refusing to stub it")

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub: only post-processing can be tested without torchvision")

    stubs = {name: types.ModuleType(name) for name in _NAMES}
    stubs["torchvision.ops.boxes"].batched_nms = unavailable
    stubs["torchvision.ops"].batched_nms = unavailable
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name in _NAMES:
            sys.modules.pop(name, None)


def official_processor(module_name: str, class_name: str) -> Any:
    """An uninitialised instance of a torchvision-only image processor; ``None`` when even the
    stubbed import fails (the caller then relies on its re-statement of the official formula)."""
    if torchvision_importable():
        return object.__new__(getattr(importlib.import_module(module_name), class_name))
    from transformers.utils import is_torchvision_available

    is_torchvision_available()  # cache the real answer before any stub could change it
    if module_name in sys.modules:  # imported earlier with stubs and then forgotten; import afresh
        del sys.modules[module_name]
    try:
        with _stubs():
            module = importlib.import_module(module_name)
    except Exception:
        return None
    finally:
        # The module is bound to the stubs: keep our reference only, not the global registration.
        sys.modules.pop(module_name, None)
        parent, _, child = module_name.rpartition(".")
        if parent in sys.modules and child in vars(sys.modules[parent]):
            delattr(sys.modules[parent], child)
    return object.__new__(getattr(module, class_name))
