"""File formats, the PNG codec, atomic writes and the demo figure's drawing (issue: the command line)."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg.cli._png import decode_png, encode_png
from rankseg.cli.figures import FONT, bars_panel, compose, draw_text, text_width
from rankseg.cli.io import InputError, OutputExistsError, read_array, split_suffix, write_atomic, write_mask


def png_with_filters(image: np.ndarray, filters: list[int]) -> bytes:
    """A greyscale/RGB 8-bit PNG whose row y uses filter filters[y], filtered by the PNG spec's formulas."""
    height = image.shape[0]
    rows = image.reshape(height, -1).astype(np.int64)
    bpp = 1 if image.ndim == 2 else image.shape[2]
    out = []
    prev = np.zeros(rows.shape[1], np.int64)
    for y in range(height):
        cur, kind = rows[y], filters[y]
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(cur)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
        prev = cur

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = 0 if image.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", image.shape[1], height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(out)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("shape", [(10, 13), (10, 7, 3)])
def test_png_decoder_undoes_every_row_filter(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = png_with_filters(image, [y % 5 for y in range(shape[0])])
    np.testing.assert_array_equal(decode_png(data), image)


@pytest.mark.parametrize(
    ("mode", "dtype", "shape"),
    [("L", np.uint8, (19, 23)), ("I;16", np.uint16, (9, 5)), ("RGB", np.uint8, (6, 8, 3))],
)
def test_png_written_here_reads_back_in_pillow_and_the_other_way(mode, dtype, shape):
    rng = np.random.default_rng(1)
    image = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    ours = Image.open(io.BytesIO(encode_png(image)))
    assert ours.mode == mode
    np.testing.assert_array_equal(np.array(ours), image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    np.testing.assert_array_equal(decode_png(buf.getvalue()), image)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_palette_pngs_give_their_indices(bits):
    labels = np.random.default_rng(bits).integers(0, min(2**bits, 21), (11, 17), dtype=np.uint8)
    img = Image.new("P", (17, 11))
    img.putdata(labels.reshape(-1).tolist())
    img.putpalette([v for c in range(256) for v in (c, 255 - c, 0)])
    buf = io.BytesIO()
    img.save(buf, format="PNG", bits=bits)
    np.testing.assert_array_equal(decode_png(buf.getvalue()), labels)


def test_corrupt_pngs_are_refused_with_the_reason():
    data = bytearray(encode_png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="signature"):
        decode_png(b"GIF89a" + bytes(data[6:]))
    data[30] ^= 0xFF  # inside IHDR
    with pytest.raises(ValueError, match="CRC mismatch"):
        decode_png(bytes(data))
    with pytest.raises(ValueError, match="needs a"):
        encode_png(np.zeros((4, 4), np.float32))


def test_split_suffix_keeps_the_double_nifti_suffix():
    assert split_suffix("a/case.nii.gz") == ("case", ".nii.gz")
    assert split_suffix("x.y.Pt") == ("x.y", ".pt")
    assert split_suffix("README") == ("README", "")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".nii", ".nii.gz"])
def test_masks_round_trip_through_every_format(tmp_path, suffix):
    labels = np.random.default_rng(0).integers(0, 5, (6, 7, 8))
    path = write_mask(tmp_path / f"m{suffix}", labels, num_classes=5)
    back, _ = read_array(path, "labels")
    np.testing.assert_array_equal(back, labels)
    masks = labels == 2
    write_mask(tmp_path / f"b{suffix}", masks, num_classes=1)
    np.testing.assert_array_equal(read_array(tmp_path / f"b{suffix}", "labels")[0].astype(bool), masks)


def test_nifti_masks_keep_the_input_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 6), np.float32), affine), tmp_path / "p.nii.gz")
    _, like = read_array(tmp_path / "p.nii.gz", "probs")
    write_mask(tmp_path / "m.nii.gz", np.ones((4, 5, 6), np.int64), like=like, num_classes=3)
    np.testing.assert_allclose(nib.load(tmp_path / "m.nii.gz").affine, affine)


def test_write_atomic_refuses_an_existing_file_without_force(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"out\.bin: exists; pass --force"):
        write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    write_atomic(target, lambda f: f.write(b"new"), force=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_one(tmp_path):
    def fail_halfway(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "new.npy", fail_halfway)
    (tmp_path / "kept.npy").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "kept.npy", fail_halfway, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npy"]
    assert (tmp_path / "kept.npy").read_bytes() == b"old"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.npy", b"not numpy", "is not a .npy file"),
        ("bad.npz", b"not a zip", "is not a .npz file"),
        ("bad.pt", b"\x00\x01garbage", "cannot be read as .pt"),
        ("bad.png", b"nope", "not a PNG file"),
        ("bad.nii.gz", b"nope", "cannot be read as .nii.gz"),
        ("notes.txt", b"hi", "unsupported file type '.txt'"),
    ],
)
def test_malformed_files_are_named_with_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_array(path, "labels")
    assert str(info.value).startswith(f"{path}: ")
    assert reason in str(info.value)


def test_archives_with_several_arrays_need_the_role_name(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.ones(3))
    with pytest.raises(
        InputError, match=r"holds 2 arrays \('a', 'b'\); expected one, or one named probs or logits"
    ):
        read_array(tmp_path / "two.npz", "probs")
    np.savez(tmp_path / "named.npz", probs=np.ones(3), other=np.zeros(3))
    assert read_array(tmp_path / "named.npz", "probs")[0].tolist() == [1, 1, 1]
    torch.save({"labels": torch.arange(3), "meta": torch.zeros(1)}, tmp_path / "d.pt")
    assert read_array(tmp_path / "d.pt", "labels")[0].tolist() == [0, 1, 2]


def test_text_is_drawn_with_the_glyphs_of_the_font():
    canvas = np.zeros((9, text_width("A1") + 2, 3), np.uint8)
    draw_text(canvas, 1, 1, "a1", (255, 0, 0))
    drawn = canvas[1:8, 1:6, 0] == 255
    np.testing.assert_array_equal(drawn, FONT["A"])
    np.testing.assert_array_equal(canvas[1:8, 7:12, 0] == 255, FONT["1"])


def test_bars_are_as_tall_as_their_values():
    panel = bars_panel([("a", 0.25, (10, 20, 30)), ("b", 0.75, (40, 50, 60))], 128, 100)
    for colour, height in (((10, 20, 30), 25), ((40, 50, 60), 75)):
        column_heights = (panel == colour).all(axis=2).sum(axis=0)
        assert column_heights.max() == height


def test_compose_has_the_documented_size():
    panel = np.zeros((16, 16, 3), np.uint8)
    from rankseg.cli.figures import GAP, LINE, MARGIN, FigureRow

    image = compose(["h1", "h2"], ["t1", "t2", "t3"], [FigureRow("r", [panel] * 3)] * 4, 16)
    assert image.shape == (
        2 * MARGIN + 3 * LINE + 4 * (LINE + 16 + GAP) - GAP,
        2 * MARGIN + 3 * 16 + 2 * GAP,
        3,
    )
