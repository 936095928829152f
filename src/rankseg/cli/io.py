"""Reading probability maps and label maps from files, and writing results atomically.

Formats: ``.npy``, ``.npz`` (the only array, or the one named for its role), ``.pt`` (a tensor, or a
dict holding one), NIfTI ``.nii`` / ``.nii.gz`` (optional ``nibabel``), and ``.png`` for label maps
and 2-D masks (through Pillow, part of the ``cli`` extra). Every failure is an :class:`InputError`
whose message starts with the file name. Outputs go to a temporary file in the target folder that
is renamed into place, so a reader never sees half a file, and an existing file is only replaced
when asked to (``force``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch

__all__ = [
    "ARRAY_SUFFIXES",
    "LABEL_SUFFIXES",
    "InputError",
    "OutputExistsError",
    "read_array",
    "split_suffix",
    "write_atomic",
    "write_mask",
]

ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".nii", ".nii.gz")
LABEL_SUFFIXES = (*ARRAY_SUFFIXES, ".png")
Role = Literal["probs", "labels"]
# Names an .npz or a .pt dict may use for its array, by role.
_KEYS = {"probs": ("probs", "logits"), "labels": ("labels", "masks")}
NIFTI_HINT = 'reading and writing NIfTI files needs nibabel: pip install "rankseg[nifti]"'
PNG_HINT = 'reading and writing PNG files needs Pillow: pip install "rankseg[cli]"'


class InputError(Exception):
    """A file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class OutputExistsError(InputError):
    """An output file exists and ``--force`` was not given."""

    def __init__(self, path: os.PathLike | str) -> None:
        super().__init__(path, "exists; pass --force to overwrite it")


def split_suffix(path: os.PathLike | str) -> tuple[str, str]:
    """``("name", ".nii.gz")`` for ``dir/name.nii.gz``: the stem files are paired by, and the format.

    >>> split_suffix("scans/case_01.nii.gz"), split_suffix("a.b.NPY")
    (('case_01', '.nii.gz'), ('a.b', '.npy'))
    """
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext.lower()) if dot and stem else (name, "")


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise ImportError(NIFTI_HINT) from None
    return nibabel


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(PNG_HINT) from None
    return Image


def _pick(path: Path, arrays: dict[str, Any], role: Role) -> Any:
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    for key in _KEYS[role]:
        if key in arrays:
            return arrays[key]
    found = ", ".join(map(repr, arrays)) or "none"
    raise InputError(
        path, f"holds {len(arrays)} arrays ({found}); expected one, or one named {' or '.join(_KEYS[role])}"
    )


def read_array(path: os.PathLike | str, role: Role) -> tuple[np.ndarray, Any]:
    """The array stored in ``path`` and, for NIfTI, the image it came from (for its affine and header).

    Raises :class:`InputError` (unreadable, malformed, unsupported format) with the file and reason.
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    allowed = LABEL_SUFFIXES if role == "labels" else ARRAY_SUFFIXES
    if suffix not in allowed:
        raise InputError(
            path, f"unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(allowed)}"
        )
    try:
        if suffix in (".nii", ".nii.gz"):
            image = _nibabel().load(str(path))
            return np.asanyarray(image.dataobj), image
        with open(path, "rb") as f:
            data = f.read()
        if suffix == ".npy":
            if not data.startswith(b"\x93NUMPY"):
                raise InputError(path, "is not a .npy file (it does not start with the NumPy header)")
            return np.load(io.BytesIO(data), allow_pickle=False), None
        if suffix == ".npz":
            if not data.startswith(b"PK"):
                raise InputError(path, "is not a .npz file (it is not a zip archive)")
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return np.asarray(_pick(path, {k: archive[k] for k in archive.files}, role)), None
        if suffix == ".png":
            return _read_png(path, data), None
        return _tensor_to_numpy(
            path, torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), role
        )
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(path, str(exc)) from None
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # any failure of a reader: report it with the file, go on with the others
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot be read as {suffix} ({type(exc).__name__}: {reason})") from None


def _read_png(path: Path, data: bytes) -> np.ndarray:
    """The pixel values of a PNG label map, read by Pillow: ``(H, W)`` for greyscale (8 or 16 bit:
    uint8 / uint16; 1, 2 or 4 bit: their integer values) and palette images (the palette indices,
    which is how label PNGs store classes); ``(H, W, channels)`` for colour images."""
    Image = _pillow()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise InputError(path, f"is not a PNG file (it holds a {image.format} image)")
            # Pillow stretches 2- and 4-bit greyscale to 0..255; the stored values are the labels
            raw_mode = image.tile[0][3] if image.tile else None
            pixels = np.array(image)
    except Image.UnidentifiedImageError:
        raise InputError(
            path, "cannot be read as .png (Pillow finds no image in it: not a PNG file, or a damaged one)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for damaged image data
        raise InputError(path, f"cannot be read as .png (damaged: {exc})") from None
    low_bits = {"L;2": 2, "L;4": 4}.get(raw_mode) if isinstance(raw_mode, str) else None
    if low_bits is not None:
        pixels = pixels // (255 // (2**low_bits - 1))
    return pixels


def _tensor_to_numpy(path: Path, obj: object, role: Role) -> tuple[np.ndarray, None]:
    if isinstance(obj, dict):
        obj = _pick(path, {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, role)
    if not isinstance(obj, torch.Tensor):
        raise InputError(path, f"holds a {type(obj).__name__}; expected a tensor or a dict of tensors")
    tensor = obj.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy(), None


def _refuse_existing(path: Path, force: bool) -> None:
    if not force and (path.exists() or path.is_symlink()):
        raise OutputExistsError(path)


def write_atomic(path: os.PathLike | str, write: Callable[[BinaryIO], None], *, force: bool = False) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it to ``path``.

    Without ``force`` an existing ``path`` is left alone and :class:`OutputExistsError` is raised
    (also when another process creates it meanwhile: the final step is a hard link, which fails
    on an existing name, where the file system supports links).
    """
    path = Path(path)
    _refuse_existing(path, force)
    suffix = split_suffix(path)[1]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(path) from None
            except OSError:  # no hard links here: the existence check above is the guard
                _refuse_existing(path, force)
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_mask(
    path: os.PathLike | str, mask: np.ndarray, *, like: Any = None, num_classes: int = 2, force: bool = False
) -> Path:
    """Write a mask (int labels or bool masks) in the format ``path``'s suffix names.

    ``.npy`` / ``.npz`` (key ``masks``) / ``.pt`` keep the dtype (int64 labels, bool masks); NIfTI
    stores uint8 (int16 above 255 classes) with the affine and header of ``like``, the input image;
    ``.png`` stores 2-D labels as 8-bit greyscale (16-bit above 256 classes), through Pillow.

    Raises ``ValueError`` for a mask PNG cannot hold (not 2-D, or values outside 0..65535).
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    if suffix == ".npy":
        return write_atomic(path, lambda f: np.save(f, mask, allow_pickle=False), force=force)
    if suffix == ".npz":
        return write_atomic(path, lambda f: np.savez_compressed(f, masks=mask), force=force)
    if suffix == ".pt":
        return write_atomic(
            path, lambda f: torch.save(torch.from_numpy(np.ascontiguousarray(mask)), f), force=force
        )
    if suffix == ".png":
        image = _png_image(mask, num_classes)
        return write_atomic(path, lambda f: image.save(f, format="PNG"), force=force)
    if suffix in (".nii", ".nii.gz"):
        nib = _nibabel()
        stored = mask.astype(np.uint8 if num_classes <= 255 else np.int16)
        affine = like.affine if like is not None else np.eye(4)
        header = like.header.copy() if like is not None else None
        image = nib.Nifti1Image(stored, affine, header)
        image.set_data_dtype(stored.dtype)
        image.header.set_slope_inter(1, 0)

        def write(f: BinaryIO) -> None:
            f.write(image.to_bytes() if suffix == ".nii" else _gzip(image.to_bytes()))

        return write_atomic(path, write, force=force)
    raise ValueError(f"cannot write masks as {suffix!r}; expected one of {', '.join(LABEL_SUFFIXES)}")


def _png_image(mask: np.ndarray, num_classes: int) -> Any:
    """A Pillow greyscale image of 2-D labels: 8-bit up to 256 classes, 16-bit above."""
    if mask.ndim != 2:
        raise ValueError(f"PNG masks must be 2-D; got shape {mask.shape}")
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    limit = np.iinfo(dtype).max
    if mask.size and (mask.min() < 0 or mask.max() > limit):
        raise ValueError(
            f"a {np.dtype(dtype).itemsize * 8}-bit PNG holds the values 0..{limit}; the mask holds "
            f"{mask.min()}..{mask.max()} (num_classes={num_classes}); save it as .npy instead"
        )
    return _pillow().fromarray(np.ascontiguousarray(mask, dtype=dtype))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)
