"""Reading probability maps and label maps from files, and writing results atomically.

Formats: ``.npy``, ``.npz`` (the only array, or the one named for its role), ``.pt`` (a tensor, or a
dict holding one), NIfTI ``.nii`` / ``.nii.gz`` (optional ``nibabel``), and ``.png`` for label maps
and 2-D masks (through Pillow, part of the ``cli`` extra). One reader serves every command: only
regular files are read, ``.npy`` data only as far as its header declares, and every array comes
back in native byte order with one of the :data:`ACCEPTED_DTYPES`. Every failure is an
:class:`InputError` whose message starts with the file name. Outputs go to a temporary file in the
target folder that is renamed into place, so a reader never sees half a file; an existing file is
only replaced when asked to (``force``), and :func:`atomic_group` makes several files one
all-or-nothing output.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import errno
import io
import math
import os
import signal
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch

from .._files import new_file_mode

__all__ = [
    "ACCEPTED_DTYPES",
    "ARRAY_SUFFIXES",
    "LABEL_SUFFIXES",
    "InputError",
    "OutputExistsError",
    "atomic_group",
    "describe_os_error",
    "file_problem",
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

    Only regular files are read (a FIFO, a device or a folder is refused with what it is), and an
    ``.npy`` array is read for exactly the bytes its header declares. The array comes back in the
    machine's byte order with one of the :data:`ACCEPTED_DTYPES` (bfloat16 ``.pt`` tensors as
    float32). Raises :class:`InputError` (unreadable, malformed, unsupported format or dtype) with
    the file and the reason.

    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> np.save(folder / "big_endian.npy", np.arange(3, dtype=">f8"))
    >>> read_array(folder / "big_endian.npy", "probs")[0].dtype
    dtype('float64')
    """
    path = Path(path)
    suffix = split_suffix(path)[1]
    allowed = LABEL_SUFFIXES if role == "labels" else ARRAY_SUFFIXES
    if suffix not in allowed:
        raise InputError(
            path, f"unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(allowed)}"
        )
    problem = file_problem(path)
    if problem is not None:
        raise InputError(path, problem)
    try:
        if suffix in (".nii", ".nii.gz"):
            image = _nibabel().load(str(path))
            return _accepted(path, np.asanyarray(image.dataobj)), image
        if suffix == ".npy":
            with _open_regular(path) as (f, size):
                return _read_npy(path, f, size), None
        data = _read_regular(path)
        if suffix == ".npz":
            if not data.startswith(b"PK"):
                raise InputError(path, "is not a .npz file (it is not a zip archive)")
            return _read_npz(path, data, role), None
        if suffix == ".png":
            return _accepted(path, _read_png(path, data)), None
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
        raise InputError(path, f"cannot be read ({describe_os_error(exc)})") from None
    except Exception as exc:  # any failure of a reader: report it with the file, go on with the others
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot be read as {suffix} ({type(exc).__name__}: {reason})") from None


def describe_os_error(exc: OSError) -> str:
    """The reason of a failed read or write, in words (disk full and quota named as such).

    >>> import errno
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"))
    'the disk is full: no space left on device'
    """
    if exc.errno == errno.ENOSPC:
        return "the disk is full: no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc) or type(exc).__name__


_NOT_REGULAR = (
    (stat.S_ISDIR, "is a folder, not a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def file_problem(path: os.PathLike | str) -> str | None:
    """Why ``path`` is not a regular file that can be opened (symbolic links followed), or None.

    >>> file_problem("/dev/null")
    'is a character device, not a regular file'
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({describe_os_error(exc)})"
    if stat.S_ISREG(mode):
        return None
    reason = next((text for test, text in _NOT_REGULAR if test(mode)), "is not a regular file")
    if os.path.islink(path):
        reason += f" (a symbolic link to {os.readlink(path)})"
    return reason


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """The open file and its size; refuses anything but a regular file, without blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced since file_problem looked at it
            raise InputError(path, "is not a regular file")
        yield f, info.st_size  # type: ignore[misc]


def _read_regular(path: Path) -> bytes:
    """The whole file, as many bytes as it had when opened (a file that grows is not followed)."""
    with _open_regular(path) as (f, size):
        data = f.read(size)
    if len(data) != size:
        raise InputError(path, f"changed while being read ({size} bytes expected, {len(data)} read)")
    return data


def _read_exactly(f: BinaryIO, count: int) -> bytearray:
    buf = bytearray(count)
    view, done = memoryview(buf), 0
    while done < count:
        got = f.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return buf[:done] if done < count else buf


def _read_npy(path: Path, f: BinaryIO, size: int, member: str = "") -> np.ndarray:
    """An ``.npy`` stream of ``size`` bytes: its header checked first, then exactly the declared data."""
    where = f" (member {member!r})" if member else ""
    magic = bytes(_read_exactly(f, 8))
    if len(magic) < 8 or not magic.startswith(b"\x93NUMPY") or magic[6] not in (1, 2, 3):
        raise InputError(path, f"is not a .npy file{where} (it does not start with the NumPy header)")
    width = 2 if magic[6] == 1 else 4
    length = int.from_bytes(bytes(_read_exactly(f, width)), "little")
    text = bytes(_read_exactly(f, length)).decode("utf8" if magic[6] == 3 else "latin1", "replace")
    try:
        header = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(int(n) for n in header["shape"])
        fortran = bool(header["fortran_order"])
        if any(n < 0 for n in shape):
            raise ValueError(f"negative dimension in {shape}")
    except Exception as exc:
        raise InputError(path, f"has a damaged .npy header{where} ({type(exc).__name__}: {exc})") from None
    _check_dtype(path, dtype)
    declared = math.prod(shape) * dtype.itemsize
    available = size - 8 - width - length
    if declared > available:
        raise InputError(
            path,
            f"is truncated{where}: its header declares shape {shape} of {dtype} ({declared} bytes) "
            f"but {max(available, 0)} bytes of data follow",
        )
    data = _read_exactly(f, declared)
    if len(data) != declared:
        raise InputError(path, f"is truncated{where}: {declared} bytes declared, {len(data)} read")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return _accepted(path, array)


def _read_npz(path: Path, data: bytes, role: Role) -> np.ndarray:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        info = _pick(path, members, role)
        with archive.open(info) as f:
            return _read_npy(path, f, info.file_size, member=info.filename)  # type: ignore[arg-type]


# What every reader hands on: probabilities need a float type, labels any of these (see load_labels).
ACCEPTED_DTYPES = "bool, int8 to int64, uint8 to uint64, float16, float32 or float64"


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind == "f" and dtype.itemsize > 8:
        raise InputError(
            path,
            f"holds {dtype.name} (extended precision) values, which torch cannot represent; "
            f"save the array as float64 (expected {ACCEPTED_DTYPES})",
        )
    if dtype.kind not in "biuf" or dtype.itemsize > 8 or dtype.fields is not None:
        what = dtype.name if dtype.fields is None else str(dtype)  # complex128, not >c16
        name = "Python objects" if dtype.kind == "O" else f"{what} values"
        raise InputError(path, f"holds {name}; expected {ACCEPTED_DTYPES}")


def _accepted(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` with an accepted dtype, in the machine's byte order (converted when stored swapped)."""
    array = np.asarray(array)
    _check_dtype(path, array.dtype)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


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
    if tensor.dtype not in _TORCH_ACCEPTED:
        raise InputError(path, f"holds {tensor.dtype} values; expected {ACCEPTED_DTYPES}")
    return _accepted(path, tensor.numpy()), None


_TORCH_ACCEPTED = {
    getattr(torch, name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")
    if hasattr(torch, name)  # torch < 2.3 has no uint16 to uint64
}  # fmt: skip


def _refuse_existing(path: Path, force: bool) -> None:
    if os.path.isdir(path):
        raise InputError(path, "is a folder; expected the name of a file to write")
    if not force and os.path.lexists(path):
        raise OutputExistsError(path)


class _Sink:
    """The temporary file as a plain stream: a writer that bypasses Python's file object (NumPy's
    ``tofile``) loses the error number of a failed write, so that a full disk reads as "4096
    requested and 3056 written"; through ``write`` the OSError keeps its ENOSPC."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        return self._f.write(data)

    def read(self, size: int = -1) -> bytes:  # zipfile (np.savez) looks for it; the file is write-only
        return self._f.read(size)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._f.flush()


@dataclass
class _Staged:
    """A complete, synced temporary file waiting to be renamed to ``path``."""

    path: Path
    tmp: Path
    force: bool

    def commit(self) -> None:
        if self.force:
            os.replace(self.tmp, self.path)
            return
        try:
            os.link(self.tmp, self.path)
        except FileExistsError:
            raise OutputExistsError(self.path) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            _refuse_existing(self.path, False)  # no hard links here: the existence check is the guard
            os.replace(self.tmp, self.path)


_GROUP: contextvars.ContextVar[list[_Staged] | None] = contextvars.ContextVar("rankseg_group", default=None)


def write_atomic(path: os.PathLike | str, write: Callable[[BinaryIO], None], *, force: bool = False) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it to ``path``.

    Without ``force`` an existing ``path`` is left alone and :class:`OutputExistsError` is raised
    (also when another process creates it meanwhile: the final step is a hard link, which fails
    on an existing name, where the file system supports links). A folder is never replaced. A
    failed write leaves no file behind and raises :class:`InputError` naming ``path`` and the reason
    (``no space left on device (the disk is full)``); an exception of ``write`` itself propagates.
    Inside :func:`atomic_group` the file is renamed into place when the group ends.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> write_atomic(target, lambda f: f.write(b"done")).read_bytes()
    b'done'
    """
    path = Path(path)
    group = _GROUP.get()
    staged: list[_Staged] = group if group is not None else []
    try:
        try:
            _refuse_existing(path, force)
            _stage(path, write, force, staged)
        except OSError as exc:
            raise InputError(path, f"cannot be written ({describe_os_error(exc)})") from None
        if group is None:
            _commit(staged)
    except BaseException:  # an interrupt between two steps must not leave the temporary file
        if group is None:
            for item in staged:
                item.tmp.unlink(missing_ok=True)
        raise
    return path


def _stage(path: Path, write: Callable[[BinaryIO], None], force: bool, staged: list[_Staged]) -> None:
    """Write ``path``'s content into a temporary file beside it, appended to ``staged``.

    The temporary file is created and recorded in ``staged`` with SIGINT / SIGTERM held back, so
    that whoever cleans ``staged`` up after an interrupt knows every file there is to remove.
    """
    suffix = split_suffix(path)[1]
    with _signals_held():
        # the temporary name is hidden (folder listings skip it) and short enough for any final name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=f".tmp{suffix}", dir=path.parent)
        item = _Staged(path, Path(tmp_name), force)
        staged.append(item)
    try:
        with os.fdopen(fd, "wb") as f:
            write(_Sink(f))  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.chmod(item.tmp, new_file_mode())
    except BaseException:
        item.tmp.unlink(missing_ok=True)
        raise


def _commit(staged: list[_Staged]) -> None:
    """Rename every staged file into place, all or none (without ``force``: the ones already renamed
    are removed again when a later one fails), with SIGINT / SIGTERM held back meanwhile."""
    done: list[_Staged] = []
    with _signals_held():
        try:
            for item in staged:
                try:
                    item.commit()
                except OSError as exc:
                    raise InputError(item.path, f"cannot be written ({describe_os_error(exc)})") from None
                done.append(item)
        except BaseException:
            for item in done:
                if not item.force:  # a file this call created: take it back
                    item.path.unlink(missing_ok=True)
            raise
        finally:
            for item in staged:
                item.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Make every :func:`write_atomic` of the block one all-or-nothing output.

    The files are written to temporary files as the block runs and renamed into place together
    when it ends without an exception (an interrupt or SIGTERM waits until they all are); when it
    fails, none is. ``rankseg predict`` writes ``x.npy`` and ``x.png`` this way.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> try:
    ...     with atomic_group():
    ...         _ = write_atomic(folder / "a.txt", lambda f: f.write(b"a"))
    ...         raise RuntimeError("the second file could not be made")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in folder.iterdir())
    []
    """
    staged: list[_Staged] = []
    token = _GROUP.set(staged)
    try:
        yield
        _commit(staged)
    except BaseException:  # also an interrupt between the block's end and the commit
        for item in staged:
            item.tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then act on them as before.

    Python runs signal handlers in the main thread whichever thread the signal reached, so a signal
    mask (``pthread_sigmask``) cannot hold them back in a process with other threads (torch's
    intra-op threads): the handlers themselves are swapped for ones that only record the signal.
    Outside the main thread (where handlers cannot be set) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)

    def record(number: int, frame: object) -> None:
        received.append(number)

    previous = {signum: signal.signal(signum, record) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)  # e.g. KeyboardInterrupt, or the runner's Terminated
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


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
