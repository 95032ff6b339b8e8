"""The demo's procedurally painted rover camera JPEG: format, size, determinism, atomic writes, content."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFilter, ImageStat
from pytest import MonkeyPatch

from rover_stream.demo import rover_image
from rover_stream.demo.rover_image import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    IMAGE_NAME,
    MAX_QUALITY,
    MIN_SIZE,
    ensure_rover_image,
    generate_rover_image,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"width": 480, "height": 270}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def default_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image at the default size, seed and quality, shared by the slower checks."""
    return generate_rover_image(tmp_path_factory.mktemp("rover") / "default.jpg")


def _is_progressive(img: Image.Image) -> bool:
    return bool(img.info.get("progressive") or img.info.get("progression"))


def _detail(img: Image.Image) -> float:
    """Mean absolute difference from a slightly blurred copy: local variation (texture, noise)."""
    grey = img.convert("L")
    return ImageStat.Stat(ImageChops.difference(grey, grey.filter(ImageFilter.BoxBlur(2)))).mean[0]


def _luma(rgb: list[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def test_default_image_is_a_complete_progressive_jpeg_of_a_few_megabytes(default_image: Path) -> None:
    data = default_image.read_bytes()
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # SOI ... EOI: not truncated
    assert 1 * MB <= len(data) <= 8 * MB
    with Image.open(default_image) as img:
        assert img.format == "JPEG"
        assert img.mode == "RGB"
        assert img.size == (DEFAULT_WIDTH, DEFAULT_HEIGHT)
        assert _is_progressive(img)
        img.load()  # decodes every scan; raises on corrupt data


@pytest.mark.parametrize("size", [(640, 360), (333, 500), (MIN_SIZE, MIN_SIZE)])
def test_requested_size_is_honoured(tmp_path: Path, size: tuple[int, int]) -> None:
    path = generate_rover_image(tmp_path / "out.jpg", width=size[0], height=size[1], seed=7)
    with Image.open(path) as img:
        assert img.size == size
        assert _is_progressive(img)


def test_returns_a_path_and_creates_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "camera.jpg"
    result = generate_rover_image(str(target), **SMALL)
    assert isinstance(result, Path)
    assert result == target and target.is_file()


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    first = generate_rover_image(tmp_path / "first.jpg", seed=11, **SMALL).read_bytes()
    second = generate_rover_image(tmp_path / "second.jpg", seed=11, **SMALL).read_bytes()
    other = generate_rover_image(tmp_path / "other.jpg", seed=12, **SMALL)
    assert first == second
    assert other.read_bytes() != first
    with Image.open(tmp_path / "first.jpg") as a, Image.open(other) as b:
        difference = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean
    assert sum(difference) / 3 > 2  # a different scene, not just a few flipped bits


def test_command_line_writes_the_default_image_byte_for_byte(tmp_path: Path, default_image: Path) -> None:
    # A separate process (with another hash seed) must paint exactly the same picture.
    out = tmp_path / "cli" / "rover.jpg"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    subprocess.run(
        [sys.executable, "-m", "rover_stream.demo.rover_image", str(out)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.read_bytes() == default_image.read_bytes()


def test_ensure_generates_a_missing_image(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "data"
    path = ensure_rover_image(directory, **SMALL)
    assert path == directory / IMAGE_NAME
    with Image.open(path) as img:
        assert img.format == "JPEG"
        assert img.size == (SMALL["width"], SMALL["height"])


def test_ensure_keeps_an_existing_image(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    path = ensure_rover_image(tmp_path, seed=1, **SMALL)
    before = path.stat()
    content = path.read_bytes()

    def must_not_render(*args: object, **kwargs: object) -> Path:
        raise AssertionError("ensure_rover_image re-rendered an existing image")

    monkeypatch.setattr(rover_image, "generate_rover_image", must_not_render)
    again = ensure_rover_image(tmp_path, seed=2, **SMALL)  # other arguments still reuse the file
    after = again.stat()
    assert again == path
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == content


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    generate_rover_image(tmp_path / "one.jpg", **SMALL)
    ensure_rover_image(tmp_path, **SMALL)
    generate_rover_image(tmp_path / "one.jpg", seed=3, **SMALL)  # replacing an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["one.jpg", IMAGE_NAME])


def test_a_failed_write_keeps_the_old_file_and_no_debris(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    target = generate_rover_image(tmp_path / IMAGE_NAME, **SMALL)
    original = target.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\xff\xd8 half a picture")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        generate_rover_image(target, seed=5, **SMALL)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [IMAGE_NAME]


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 0}, {"height": MIN_SIZE - 1}, {"quality": 0}, {"quality": MAX_QUALITY + 1}],
)
def test_invalid_arguments_are_refused_before_writing(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate_rover_image(tmp_path / "out" / "x.jpg", **kwargs)
    assert not (tmp_path / "out").exists()


def test_the_picture_is_a_martian_landscape_not_noise(default_image: Path) -> None:
    with Image.open(default_image) as opened:
        img = opened.convert("RGB")
    width, height = img.size
    band = height // 5
    sky = img.crop((0, 0, width, band))
    ground = img.crop((0, height - band, width, height))
    sky_rgb, ground_rgb = ImageStat.Stat(sky).mean, ImageStat.Stat(ground).mean

    # Sky: a smooth butterscotch gradient, not grey; ground: darker, redder, textured.
    assert sky_rgb[0] > sky_rgb[1] > sky_rgb[2]
    assert sky_rgb[0] - sky_rgb[2] > 30, f"sky looks grey: {sky_rgb}"
    assert ground_rgb[0] - ground_rgb[2] > 30, f"ground is not rust-coloured: {ground_rgb}"
    assert _luma(sky_rgb) > _luma(ground_rgb) + 10
    assert sky_rgb[2] / sky_rgb[0] > ground_rgb[2] / ground_rgb[0]  # dusty sky is less saturated than rust
    sky_detail, ground_detail = _detail(sky), _detail(ground)
    assert sky_detail < 2.0, f"sky is not smooth: {sky_detail:.2f}"
    assert ground_detail > 4 * max(sky_detail, 1.0), f"ground lacks texture: {ground_detail:.2f}"

    # The hazy sky brightens toward the horizon.
    upper = ImageStat.Stat(img.crop((0, 0, width, height // 10))).mean
    lower = ImageStat.Stat(img.crop((0, height * 3 // 10, width, height * 4 // 10))).mean
    assert _luma(lower) > _luma(upper) + 10
