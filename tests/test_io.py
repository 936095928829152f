"""File formats (PNG through Pillow), atomic writes, and the figures matplotlib draws (issue 13)."""

import io
import re
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image

from rankseg.cli.evaluate import PairResult, summarise
from rankseg.cli.figures import (
    DPI,
    PALETTE,
    DemoRow,
    demo_figure,
    figure_format,
    gains_figure,
    plot_gains,
    save_figure,
)
from rankseg.cli.io import InputError, OutputExistsError, read_array, split_suffix, write_atomic, write_mask

# ------------------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize(
    ("num_classes", "mode", "dtype"), [(5, "L", np.uint8), (256, "L", np.uint8), (300, "I;16", np.uint16)]
)
def test_png_masks_are_8_or_16_bit_greyscale_and_read_back(tmp_path, num_classes, mode, dtype):
    labels = np.random.default_rng(num_classes).integers(0, num_classes, (19, 23))
    labels[0, :2] = (0, num_classes - 1)  # both ends of the range
    path = write_mask(tmp_path / "m.png", labels, num_classes=num_classes)
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", mode, (23, 19))
        np.testing.assert_array_equal(np.array(image), labels)
    back, like = read_array(path, "labels")
    assert back.dtype == dtype and like is None
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_palette_pngs_give_their_indices(tmp_path, bits):
    labels = np.random.default_rng(bits).integers(0, min(2**bits, 21), (11, 17), dtype=np.uint8)
    image = Image.new("P", (17, 11))
    image.putdata(labels.reshape(-1).tolist())
    image.putpalette([v for c in range(256) for v in (c, 255 - c, 0)])
    image.save(tmp_path / "p.png", bits=bits)
    with Image.open(tmp_path / "p.png") as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(read_array(tmp_path / "p.png", "labels")[0], labels)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_greyscale_pngs_of_any_depth_give_the_stored_values(tmp_path, bits):
    """Pillow shows 2- and 4-bit greyscale stretched to 0..255; a label map needs the stored values."""
    top = 2**bits - 1
    labels = np.random.default_rng(bits).integers(0, top + 1, (9, 13))
    labels.flat[:2] = (0, top)
    if bits == 1:
        image = Image.fromarray(labels.astype(bool))
    elif bits < 16:  # Pillow packs the high bits of 8-bit values: give them as Pillow shows them
        image = Image.fromarray((labels * (255 // top)).astype(np.uint8))
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    image.save(tmp_path / "g.png", bits=bits) if bits < 8 else image.save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as saved:  # the file really has that bit depth
        assert saved.tile[0][3] == {1: "1", 2: "L;2", 4: "L;4", 8: "L", 16: "I;16B"}[bits]
    back = read_array(tmp_path / "g.png", "labels")[0]
    np.testing.assert_array_equal(back.astype(np.int64), labels)


def test_masks_a_png_cannot_hold_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"PNG masks must be 2-D; got shape \(2, 3, 4\)"):
        write_mask(tmp_path / "a.png", np.zeros((2, 3, 4), np.int64), num_classes=3)
    with pytest.raises(ValueError, match=r"a 16-bit PNG holds the values 0..65535; the mask holds 0..70000"):
        write_mask(tmp_path / "b.png", np.array([[0, 70000]]), num_classes=70001)
    with pytest.raises(ValueError, match=r"an? 8-bit PNG holds the values 0..255; the mask holds -1..2"):
        write_mask(tmp_path / "c.png", np.array([[-1, 2]]), num_classes=3)
    assert list(tmp_path.iterdir()) == []


def test_image_files_that_are_no_png_are_named_with_the_format(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "photo.png", format="JPEG")
    with pytest.raises(InputError, match=r"photo\.png: is not a PNG file \(it holds a JPEG image\)"):
        read_array(tmp_path / "photo.png", "labels")
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-30])  # the last chunks missing
    with pytest.raises(InputError, match=r"cut\.png: cannot be read as \.png"):
        read_array(tmp_path / "cut.png", "labels")


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


# An interrupt (the runner's SIGTERM handler raises once, as Ctrl-C does) at any moment of a
# write: hundreds of interrupts a second land between every two steps of staging and committing.
_INTERRUPTED_WRITES = """
import os, random, signal, sys, tempfile, threading, time
from pathlib import Path
from rankseg.cli.io import atomic_group, write_atomic

armed = False
def interrupt(signum, frame):
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt

signal.signal(signal.SIGTERM, interrupt)
folder, stop = Path(sys.argv[1]), False
def shooter():  # from another thread, as a signal may reach any of torch's threads
    rng = random.Random(0)
    while not stop:
        time.sleep(rng.uniform(0, 2e-4))
        os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=shooter, daemon=True).start()
interrupted, i, deadline = 0, 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    i += 1
    try:
        armed = True
        with atomic_group():
            write_atomic(folder / f"{i}.npy", lambda f: f.write(b"x" * 64))
            write_atomic(folder / f"{i}.png", lambda f: f.write(b"y" * 64))
        armed = False
    except KeyboardInterrupt:
        interrupted += 1
stop = True
print(interrupted)
"""


def test_an_interrupt_at_any_moment_of_a_write_leaves_no_temporary_file_and_no_half_case(tmp_path):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WRITES, str(tmp_path), "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 100  # the interrupts did land
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith(".")] == []
    stems = [n.rsplit(".", 1)[0] for n in names]
    assert all(stems.count(stem) == 2 for stem in stems)  # x.npy only with x.png


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


# --------------------------------------------------------------------------------------- figures


def test_figure_format_follows_the_suffix_and_refuses_others():
    assert [figure_format(f"f{s}") for s in (".png", ".PDF", ".svg")] == ["png", "pdf", "svg"]
    for name in ("f.jpg", "f", "f.png.txt"):
        with pytest.raises(
            ValueError, match=rf"{name}: unsupported figure format .*expected .*\.png, \.pdf, \.svg"
        ):
            figure_format(name)


def matplotlib_made(path):
    """``(format, size)`` of a figure file checked to be matplotlib's work: PNG size in pixels (read
    by Pillow, made by "Matplotlib version ..."), PDF and SVG page size in points."""
    data = path.read_bytes()
    if data.startswith(b"%PDF-"):
        assert re.search(rb"/Producer \(Matplotlib pdf backend", data)
        box = re.search(rb"/MediaBox \[ 0 0 ([\d.]+) ([\d.]+) \]", data)
        return "pdf", (float(box.group(1)), float(box.group(2)))
    if data.startswith(b"<?xml"):
        root = ElementTree.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert "<dc:title>Matplotlib v" in data.decode()
        return "svg", (
            float(root.get("width").removesuffix("pt")),
            float(root.get("height").removesuffix("pt")),
        )
    with Image.open(path) as image:
        assert image.text["Software"].startswith("Matplotlib version")
        return image.format.lower(), image.size


def two_image_summary():
    """What ``rankseg evaluate`` plots: two images, two classes, RMA finding one more pixel of class 0."""
    counts = np.array([[[3, 1], [5, 2], [4, 2]], [[2, 0], [3, 1], [4, 1]]])  # (image, 3, class)
    better = np.array([[1, 0], [0, 0], [0, 0]])
    return summarise(
        [
            PairResult(f"im{i}", 2, "argmax", {"argmax": c, "RMA": c + better}, {"argmax": 0.1, "RMA": 0.2})
            for i, c in enumerate(counts)
        ]
    )


def test_figures_are_written_in_the_format_of_the_suffix_and_never_over_a_file(tmp_path):
    summary = two_image_summary()
    sizes = {"png": (800, 400), "pdf": (576.0, 288.0), "svg": (576.0, 288.0)}  # 8 x 4 in; 100 dpi
    for suffix, size in sizes.items():
        path = plot_gains(summary, tmp_path / f"gains.{suffix}")
        assert matplotlib_made(path) == (suffix, size)
    before = (tmp_path / "gains.svg").read_bytes()
    with pytest.raises(OutputExistsError):
        plot_gains(summary, tmp_path / "gains.svg")
    assert (tmp_path / "gains.svg").read_bytes() == before
    with pytest.raises(ValueError, match=r"unsupported figure format '\.gif'"):
        save_figure(gains_figure(summary), tmp_path / "gains.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gains.pdf", "gains.png", "gains.svg"]
    ax = gains_figure(summary).axes[0]
    # per-image mean Dice gain: class 0 goes 6/9 -> 8/9 and 4/7 -> 6/7, over two classes
    gain = ((8 / 9 - 6 / 9) / 2 + (6 / 7 - 4 / 7) / 2) / 2
    assert [line.get_label() for line in ax.get_lines()][:1] == [f"RMA (mean +{gain:.4f})"]


def demo_rows():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), (6, 8)).transpose(2, 0, 1)  # (3, 6, 8)
    one = rng.random((1, 6, 8))
    return [
        DemoRow("image 1 of 1", probs, probs.argmax(0), np.where(probs[1] > 0.3, 1, probs.argmax(0)),
                [("argmax", 0.5), ("RMA", 0.625)]),
        DemoRow("JMLR example 1", one, one[0] > 0.5, (one[0] > 0.25) & (one[0] < 0.9),
                [("threshold", 0.25), ("RMA", 0.75)]),
    ]  # fmt: skip


def _rgb(labels):
    from matplotlib.colors import to_rgb

    return np.array([to_rgb(PALETTE[k]) for k in labels.reshape(-1)]).reshape(*labels.shape, 3)


def test_demo_figure_has_titled_panels_a_class_legend_a_colour_bar_and_the_dice_bars():
    rows = demo_rows()
    fig = demo_figure(rows, solver="RMA", classes=3, title="demo")
    np.testing.assert_allclose(fig.get_size_inches() * DPI, (1300, 2 * 230 + 120))
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 5
    assert [ax.get_title() for ax in grid[:5]] == [
        "probabilities", "argmax / threshold", "RankSEG (RMA)", "changed pixels", "Dice per image",
    ]  # fmt: skip
    assert [grid[5 * r].get_ylabel() for r in range(2)] == ["image 1 of 1", "JMLR example 1"]
    (colourbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert colourbar.get_ylabel().startswith("probability") and colourbar.get_ylim() == (0.0, 1.0)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:3] == ["class 0", "class 1", "class 2"]
    for r, row in enumerate(rows):
        bars = grid[5 * r + 4]
        assert [p.get_height() for p in bars.patches] == [d for _, d in row.dice]
        assert [t.get_text() for t in bars.texts] == [f"{d:.3f}" for _, d in row.dice]
        assert [t.get_text() for t in bars.get_xticklabels()] == [n for n, _ in row.dice]
    # the label panels show each pixel in its class colour; the changed panel only what RankSEG changed
    from matplotlib.colors import to_rgb

    baseline, changed = grid[1].get_images()[0].get_array(), grid[3].get_images()[0].get_array()
    np.testing.assert_allclose(baseline[0, 0], to_rgb(PALETTE[rows[0].baseline[0, 0]]))
    moved = rows[0].baseline != rows[0].rankseg
    assert moved.any() and (~moved).any()
    assert (np.asarray(changed)[~moved] == 0).all() and (np.asarray(changed)[moved].sum(axis=-1) > 0).all()
    np.testing.assert_allclose(np.asarray(changed)[moved], _rgb(rows[0].rankseg[moved]))
    # one class: pixels RankSEG adds in the class colour, pixels it removes grey, the rest black
    before, after = rows[1].baseline, rows[1].rankseg
    changed = np.asarray(grid[8].get_images()[0].get_array())
    assert (after & ~before).any() and (before & ~after).any()
    np.testing.assert_allclose(
        changed[after & ~before], np.broadcast_to(to_rgb(PALETTE[0]), (int((after & ~before).sum()), 3))
    )
    np.testing.assert_allclose(
        changed[before & ~after], np.broadcast_to(to_rgb("#8c8c8c"), (int((before & ~after).sum()), 3))
    )
    assert (changed[before == after] == 0).all()


def test_figures_leave_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    save_figure(demo_figure(demo_rows(), "RMA", 3, "demo"), tmp_path / "d.svg")
    assert matplotlib.get_backend() == backend
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the umask from /proc")
def test_atomic_writes_read_the_umask_without_setting_it(tmp_path, monkeypatch):
    """Setting the umask to read it is a race: a thread creating a file in that moment (Dask
    workers run tasks in threads) made it world-writable (5 of 2,400 files in a threaded run)."""
    import os

    from rankseg.cli.io import write_atomic
    from rankseg.integration import nnunet

    previous = os.umask(0o027)
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
    try:
        path = write_atomic(tmp_path / "a.bin", lambda f: f.write(b"x"))
        nnunet._copy_atomic(path, tmp_path / "b.bin", False)
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert calls == []
    assert (path.stat().st_mode & 0o777) == 0o640 == ((tmp_path / "b.bin").stat().st_mode & 0o777)
