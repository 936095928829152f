"""A small PNG codec (zlib + struct), so that masks and figures need nothing beyond NumPy.

Writes 8-bit greyscale, 16-bit greyscale and 8-bit RGB images (no filtering, one IDAT chunk).
Reads the non-interlaced PNGs that label maps use: greyscale and palette images of 1 to 16 bits
(palette images give their indices, which is how label PNGs store classes), and RGB / alpha
images, with any of the five row filters.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["decode_png", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(image: np.ndarray, compression: int = 6) -> bytes:
    """PNG bytes of ``image``: ``(H, W)`` uint8 or uint16 (greyscale) or ``(H, W, 3)`` uint8 (RGB).

    >>> data = encode_png(np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> data[:8] == _SIGNATURE, decode_png(data).tolist()
    (True, [[0, 1, 2], [3, 4, 5]])
    """
    image = np.asarray(image)
    if image.ndim == 2 and image.dtype == np.uint8:
        depth, colour, raw = 8, 0, image
    elif image.ndim == 2 and image.dtype == np.uint16:
        depth, colour, raw = 16, 0, image.astype(">u2")
    elif image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        depth, colour, raw = 8, 2, image
    else:
        raise ValueError(
            "encode_png needs a (H, W) uint8 or uint16 array or a (H, W, 3) uint8 array; "
            f"got shape {image.shape} and dtype {image.dtype}"
        )
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"a PNG image needs at least one pixel; got shape {image.shape}")
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(height, -1)
    filtered = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"".join(
        [
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compression)),
            _chunk(b"IEND", b""),
        ]
    )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(data: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    if len(data) < height * (stride + 1):
        raise ValueError(f"image data is truncated: {len(data)} bytes for {height} rows of {stride + 1}")
    raw = np.frombuffer(data, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = int(raw[y, 0]), raw[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: a running sum (mod 256) along each byte lane of the pixel
            row = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            row = line + prev
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the byte just decoded
            vals, up, cur = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (left + up[i]) >> 1
                else:
                    pred = _paeth(left, up[i], up[i - bpp] if i >= bpp else 0)
                cur[i] = (vals[i] + pred) & 0xFF
            row = np.array(cur, np.uint8)
        else:
            raise ValueError(f"row {y} has the unknown filter type {kind}")
        out[y] = row
        prev = row
    return out


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of a PNG: ``(H, W)`` for greyscale and palette (indices), ``(H, W, S)`` otherwise.

    8-bit and smaller samples give uint8, 16-bit samples uint16. Raises ``ValueError`` naming what
    is wrong with a file that is not a PNG this reader handles.
    """
    if data[:8] != _SIGNATURE:
        raise ValueError("not a PNG file (the 8-byte PNG signature is missing)")
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise ValueError(f"PNG chunk {kind!r} is truncated")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"PNG chunk {kind!r} is corrupt (CRC mismatch)")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError("PNG file has no IHDR or no IDAT chunk")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"unsupported PNG colour type {colour} with bit depth {depth}")
    if interlace:
        raise ValueError("interlaced PNGs are not supported; save the image without interlacing")
    samples = _CHANNELS[colour]
    bits = width * samples * depth
    stride = (bits + 7) // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"PNG image data cannot be decompressed ({exc})") from None
    rows = _unfilter(raw, height, stride, max(1, samples * depth // 8))
    if depth == 16:
        values = rows.view(">u2").astype(np.uint16)
    elif depth == 8:
        values = rows
    else:  # 1, 2 or 4 bits: unpack the bits, then read each group of `depth` bits as a number
        bit_rows = np.unpackbits(rows, axis=1)[:, :bits].reshape(height, -1, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        values = (bit_rows * weights).sum(axis=2, dtype=np.uint8)
    values = values.reshape(height, width, samples)
    return values[:, :, 0] if samples == 1 else values
