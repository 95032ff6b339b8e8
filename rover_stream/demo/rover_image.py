"""Procedurally painted "rover camera" picture for the Mission Control demo.

``GET /stream/rover-image`` streams a multi-megabyte *progressive* JPEG in small chunks so that a browser
visibly paints it coarse-to-fine while the bytes arrive. Instead of shipping or downloading a photo, the
demo paints its own Martian landscape here from a seed: a butterscotch sky hazy near the horizon with a
small distant sun, layered rust and ochre ridges built from midpoint-displacement profiles, craters,
faceted shaded rocks with cast shadows, pebbles, fine regolith grain and a pair of rover tracks leading
away from the camera.

Only Pillow is used, and all the pixel work is done by its C operations (gradients, resizes of small noise
images, blurs, channel blends, polygon and ellipse drawing), so a 4K frame renders in a few seconds.
Randomness comes from :class:`random.Random` instances seeded from the seed and a feature name, so the
same seed always yields the same bytes, and the composition is essentially the same at any resolution.

Files are written atomically (temporary file in the same directory, ``fsync``, :func:`os.replace`), so a
reader or a concurrent :func:`ensure_rover_image` caller never sees a half-written JPEG.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

DEFAULT_WIDTH = 3840
"""Default image width in pixels (4K UHD)."""
DEFAULT_HEIGHT = 2160
"""Default image height in pixels."""
DEFAULT_SEED = 1976
"""Default scene seed (the year Viking 1 sent back the first pictures from the surface)."""
DEFAULT_QUALITY = 94
"""Default JPEG quality; with the regolith grain this lands the defaults at a few megabytes."""
IMAGE_NAME = "rover_image.jpg"
"""File name used by :func:`ensure_rover_image`."""

JPEG_SUBSAMPLING = 0
"""Chroma subsampling passed to Pillow: 0 is 4:4:4, which keeps the fine rust/ochre colour detail."""
MIN_SIZE = 32
"""Smallest accepted width or height in pixels."""
MAX_QUALITY = 95
"""Largest accepted JPEG quality (Pillow advises against going above 95)."""

HORIZON = 0.47
"""Height of the true horizon (vanishing line of the ground plane) as a fraction of the image height."""

RGB = tuple[int, int, int]
Point = tuple[float, float]
Span = tuple[float, float]  # (top, bottom) screen rows

_SKY_STOPS: tuple[tuple[float, RGB], ...] = (
    (0.00, (150, 104, 80)),  # zenith: deeper, dustier butterscotch
    (0.45, (188, 140, 108)),
    (0.80, (214, 170, 136)),
    (1.00, (228, 190, 158)),  # horizon haze
)
_HAZE: RGB = (222, 180, 148)
_SUN_CORE: RGB = (255, 252, 244)
_SUN_HALO: RGB = (236, 232, 228)
_SUN_GLOW: RGB = (250, 214, 178)
_ROCK_DARK: RGB = (52, 38, 32)
_ROCK_LIGHT: RGB = (196, 148, 112)
_SHADOW: RGB = (46, 22, 12)


@dataclass(frozen=True)
class _Layer:
    """One band of terrain, painted back to front."""

    base: float  # lowest point of the ridge line, fraction of the image height
    amplitude: float  # ridge relief, fraction of the image height
    roughness: float  # midpoint-displacement persistence: higher is more jagged
    cells: int  # texture noise cells across the width at the coarsest octave (more = finer = farther)
    squash: float  # vertical compression of the texture (perspective foreshortening)
    dark: RGB
    mid: RGB
    light: RGB
    haze: float  # 0..1 blend toward the horizon haze colour
    octaves: int = 5  # texture detail
    massif: float = 0.0  # height of an extra broad mountain, fraction of the image height
    strata: float = 0.0  # strength of layered-sediment banding


_LAYERS: tuple[_Layer, ...] = (
    _Layer(0.475, 0.060, 0.52, 14, 3.0, (120, 78, 62), (166, 116, 90), (210, 166, 134), 0.5, 4, 0.10, 0.55),
    _Layer(0.505, 0.045, 0.56, 22, 4.0, (116, 66, 44), (160, 100, 68), (204, 146, 106), 0.36, 4, strata=0.2),
    _Layer(0.545, 0.040, 0.58, 20, 4.0, (104, 56, 34), (156, 90, 56), (206, 140, 96), 0.2, 5),
    _Layer(0.605, 0.045, 0.55, 14, 3.0, (92, 48, 28), (150, 86, 50), (210, 142, 94), 0.08, 5),
    _Layer(0.680, 0.040, 0.50, 6, 2.0, (84, 44, 26), (152, 88, 52), (222, 158, 108), 0.0, 6),
)


def generate_rover_image(
    path: os.PathLike[str] | str,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    seed: int = DEFAULT_SEED,
    quality: int = DEFAULT_QUALITY,
) -> pathlib.Path:
    """Render the Martian landscape and write it atomically to *path* as a progressive JPEG.

    Parent directories are created as needed. The JPEG is first written to a temporary file in the target
    directory, flushed and ``fsync``-ed, then moved into place with :func:`os.replace`, so the file at
    *path* is always either absent, the previous version, or complete.

    Args:
        path: Destination file.
        width: Image width in pixels (at least :data:`MIN_SIZE`).
        height: Image height in pixels (at least :data:`MIN_SIZE`).
        seed: Scene seed; the same seed, size and quality always produce byte-identical output.
        quality: JPEG quality, 1 to :data:`MAX_QUALITY`.

    Returns:
        The destination path as a :class:`pathlib.Path`.

    Raises:
        ValueError: If the size or quality is out of range.
    """
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE}x{MIN_SIZE}, got {width}x{height}")
    if not 1 <= quality <= MAX_QUALITY:
        raise ValueError(f"JPEG quality must be between 1 and {MAX_QUALITY}, got {quality}")
    target = pathlib.Path(path)
    image = render_rover_image(width, height, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(
                fh,
                format="JPEG",
                quality=quality,
                progressive=True,
                optimize=True,
                subsampling=JPEG_SUBSAMPLING,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; the image is meant to be served
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)
    return target


def ensure_rover_image(directory: os.PathLike[str] | str, **kwargs: int) -> pathlib.Path:
    """Return ``directory / IMAGE_NAME``, generating it first only if it does not exist yet.

    An existing file is never re-rendered, even if *kwargs* differ from the ones it was made with. Several
    processes may call this at once: each may render, but thanks to the atomic replace in
    :func:`generate_rover_image` a reader only ever sees a complete image.

    Args:
        directory: Directory that holds (or will hold) the image; created if missing.
        **kwargs: ``width``, ``height``, ``seed`` and/or ``quality``, passed to :func:`generate_rover_image`.

    Returns:
        The path of the image.
    """
    target = pathlib.Path(directory) / IMAGE_NAME
    if target.is_file():
        return target
    return generate_rover_image(target, **kwargs)


def render_rover_image(
    width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, seed: int = DEFAULT_SEED
) -> Image.Image:
    """Paint the landscape in memory and return it as an ``RGB`` :class:`PIL.Image.Image`.

    The composition (ridge shapes, crater and rock placement, tracks) depends only on *seed*, not on the
    resolution; per-pixel noise is generated at the requested size.
    """
    size = (width, height)
    canvas = _sky(size, _rng(seed, "sky"))
    ground = Image.new("L", size, 0)  # coverage of the terrain, for placing rocks and grain
    for index, layer in enumerate(_LAYERS):
        ridge = _ridge_line(size, layer, _rng(seed, f"ridge{index}"))
        _paint_layer(canvas, ground, ridge, layer, _rng(seed, f"texture{index}"))

    bands = _clear_bands(size)
    relief = Image.new("L", size, 128)
    track = _Tracks(size, bands[-1][0], _rng(seed, "tracks"))
    _draw_craters(relief, bands, track, _rng(seed, "craters"))
    track.draw(relief)
    relief = relief.filter(ImageFilter.GaussianBlur(max(0.5, width / 2400)))
    canvas = ImageChops.hard_light(canvas, Image.merge("RGB", (relief, relief, relief)))

    _draw_rocks(canvas, ground, track, _rng(seed, "rocks"))
    _draw_pebbles(canvas, ground, track, _rng(seed, "pebbles"))
    canvas = _add_grain(canvas, ground, _rng(seed, "grain"))
    return canvas


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def _rng(seed: int, feature: str) -> random.Random:
    """An independent, reproducible random stream for one feature of the scene."""
    return random.Random(f"rover-image:{seed}:{feature}")


def _lerp(a: RGB, b: RGB, t: float) -> RGB:
    """Linear interpolation between two colours, *t* clamped to ``[0, 1]``."""
    t = min(1.0, max(0.0, t))
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Uniform white noise as an ``L`` image (deterministic, unlike ``Image.effect_noise``)."""
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))


def _fractal_noise(
    rng: random.Random, size: tuple[int, int], cells: tuple[int, int], octaves: int, persistence: float
) -> Image.Image:
    """Summed value noise: small random images upscaled bicubically, octave by octave.

    The octaves are summed at half resolution (their finest cells still span several pixels) and the result
    is stretched to *size* once, which halves the cost of the dominant resizes.
    """
    work = (max(1, (size[0] + 1) // 2), max(1, (size[1] + 1) // 2))
    acc: Image.Image | None = None
    total = 0.0
    weight = 1.0
    for octave in range(octaves):
        grid = (max(2, cells[0] << octave), max(2, cells[1] << octave))
        if acc is not None and (grid[0] > work[0] or grid[1] > work[1]):
            break
        layer = _noise(rng, grid).resize(work, Image.Resampling.BICUBIC)
        total += weight
        acc = layer if acc is None else Image.blend(acc, layer, weight / total)
        weight *= persistence
    assert acc is not None
    return ImageOps.autocontrast(acc, cutoff=1).resize(size, Image.Resampling.BICUBIC)


def _midpoint_profile(rng: random.Random, levels: int, roughness: float) -> list[float]:
    """A 1-D midpoint-displacement profile of ``2**levels + 1`` samples, normalised to ``[0, 1]``."""
    count = (1 << levels) + 1
    values = [0.0] * count
    values[0], values[-1] = rng.uniform(-1, 1), rng.uniform(-1, 1)
    step, scale = count - 1, 1.0
    while step > 1:
        half = step // 2
        for i in range(half, count - 1, step):
            values[i] = (values[i - half] + values[i + half]) / 2 + rng.uniform(-scale, scale)
        scale *= roughness
        step = half
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return [(v - low) / span for v in values]


def _ridge_line(size: tuple[int, int], layer: _Layer, rng: random.Random) -> list[Point]:
    """Screen points of a layer's ridge line, left to right; the lowest point sits at ``layer.base``."""
    width, height = size
    profile = _midpoint_profile(rng, 10, layer.roughness)
    if layer.massif:
        # A broad mountain (think Aeolis Mons) with a flat-ish summit and eroded flanks.
        centre = rng.uniform(0.55, 0.8)
        spread = rng.uniform(0.14, 0.2)
        bump = [math.exp(-((((i / (len(profile) - 1)) - centre) / spread) ** 4)) for i in range(len(profile))]
        scale = layer.massif / layer.amplitude
        profile = [p + b * scale * (0.85 + 0.15 * p) for p, b in zip(profile, bump, strict=True)]
        low = min(profile)
        profile = [p - low for p in profile]
    last = len(profile) - 1
    return [(width * i / last, height * (layer.base - layer.amplitude * p)) for i, p in enumerate(profile)]


def _sky(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Vertical butterscotch gradient, faint dust banks, and a small sun with its glow."""
    width, height = size
    horizon = HORIZON * height
    column: list[RGB] = []
    for y in range(height):
        t = min(1.0, y / horizon)
        for (t0, c0), (t1, c1) in zip(_SKY_STOPS, _SKY_STOPS[1:], strict=False):
            if t <= t1:
                column.append(_lerp(c0, c1, (t - t0) / (t1 - t0)))
                break
    strip = Image.new("RGB", (1, height))
    strip.putdata(column)
    sky = strip.resize(size, Image.Resampling.BILINEAR)

    # Dust: very low-frequency, low-amplitude modulation (keeps the sky smooth).
    dust = _fractal_noise(rng, (max(2, width // 8), max(2, height // 8)), (6, 3), 4, 0.5)
    dust = dust.point(lambda v: 124 + v * 8 // 255).resize(size, Image.Resampling.BICUBIC)
    sky = ImageChops.hard_light(sky, Image.merge("RGB", (dust, dust, dust)))

    sun_x, sun_y = rng.uniform(0.16, 0.3) * width, rng.uniform(0.12, 0.18) * height
    unit = min(width, height)
    for radius, colour, strength in (
        (0.42 * unit, _SUN_GLOW, 0.30),  # wide forward-scattering glow
        (0.07 * unit, _SUN_HALO, 0.55),  # tight, slightly bluish halo (as seen from Mars)
        (0.010 * unit, _SUN_CORE, 1.0),  # the disc itself
    ):
        sky = _glow(sky, (sun_x, sun_y), radius, colour, strength)
    return sky


def _glow(image: Image.Image, centre: Point, radius: float, colour: RGB, strength: float) -> Image.Image:
    """Blend *colour* into *image* through a soft disc (drawn small and upscaled for big radii)."""
    width, height = image.size
    factor = max(1, int(radius // 12))
    small = (max(1, width // factor), max(1, height // factor))
    mask = Image.new("L", small, 0)
    cx, cy, r = centre[0] / factor, centre[1] / factor, max(radius / factor, 0.75)
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=round(255 * strength))
    mask = mask.filter(ImageFilter.GaussianBlur(max(r * 0.6, 0.6) if factor > 1 else r * 0.25))
    mask = mask.resize(image.size, Image.Resampling.BICUBIC)
    return Image.composite(Image.new("RGB", image.size, colour), image, mask)


def _strata(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Gently bent horizontal banding, like eroded sedimentary layers seen from afar."""
    width, height = size
    slack = max(4, height // 8)  # room for the bands to bend up and down
    rows = max(2, (height + 2 * slack) // 3)
    bands: list[int] = []
    while len(bands) < rows:
        bands.extend([rng.randint(70, 190)] * rng.randint(1, 6))
    column = Image.new("L", (1, rows))
    column.putdata(bands[:rows])
    flat = column.resize((width, height + 2 * slack), Image.Resampling.BILINEAR)
    # Bend the bands with a mesh warp: vertical slices whose edges shift by a smooth random walk.
    slices = 12
    offsets: list[float] = []
    level, drift = 0.0, 0.0
    for _ in range(slices + 1):
        drift = 0.6 * drift + rng.uniform(-0.35, 0.35)
        level = min(1.0, max(-1.0, level + drift))
        offsets.append(slack * (1 + 0.9 * level))
    mesh: list[tuple[tuple[int, int, int, int], tuple[float, ...]]] = []
    for i in range(slices):
        x0, x1 = width * i // slices, width * (i + 1) // slices
        o0, o1 = offsets[i], offsets[i + 1]
        quad = (x0, o0, x0, o0 + height, x1, o1 + height, x1, o1)  # NW, SW, SE, NE in the source
        mesh.append(((x0, 0, x1, height), quad))
    return flat.transform(size, Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)


def _paint_layer(
    canvas: Image.Image,
    ground: Image.Image,
    ridge: list[Point],
    layer: _Layer,
    rng: random.Random,
) -> None:
    """Texture, shade and colour one terrain band and composite it onto *canvas* (and *ground*)."""
    width, height = canvas.size
    top = max(0, int(min(y for _, y in ridge)) - 2)
    box_size = (width, height - top)

    rim = max(1, round(height / 700))
    # Below this strip the layer mask is solid, so edge effects only need to be computed inside it.
    strip = (0, 0, width, min(box_size[1], int(max(y for _, y in ridge)) - top + 8 * rim + 4))

    mask = Image.new("L", box_size, 0)
    outline = [(x, y - top) for x, y in ridge]
    ImageDraw.Draw(mask).polygon([(0, box_size[1]), *outline, (width, box_size[1])], fill=255)
    edge = mask.crop(strip).filter(ImageFilter.GaussianBlur(max(0.4, width / 4000 * (1.0 + layer.haze))))
    mask.paste(edge, strip)

    # Rock-and-dust texture: fractal value noise, compressed vertically for distant layers.
    cells_y = max(2, round(layer.cells * box_size[1] / width * layer.squash))
    texture = _fractal_noise(rng, box_size, (layer.cells, cells_y), layer.octaves, 0.55)
    if layer.strata:
        texture = Image.blend(texture, _strata(rng, box_size), layer.strata)
    # Bump lighting from the upper left: difference with a shifted copy acts as a directional derivative.
    shift = max(1, round(width / 1600))
    lit = ImageChops.subtract(texture, ImageChops.offset(texture, shift, shift), 0.5, 128)
    shade = Image.blend(texture, lit, 0.45)

    # Slope shading: faces of the ridge that rise toward the right face the sun on the left.
    slopes: list[int] = []
    for (x0, y0), (x1, y1) in zip(ridge, ridge[1:], strict=False):
        gradient = (y1 - y0) / max(x1 - x0, 1e-6)
        slopes.append(max(0, min(255, round(128 - 200 * gradient))))
    slope = Image.new("L", (len(slopes), 1))
    slope.putdata(slopes)
    # Only broad facets: small-scale wiggles of the ridge line would smear into vertical stripes.
    slope = slope.filter(ImageFilter.BoxBlur(12)).resize(box_size, Image.Resampling.BILINEAR)
    # ... fading out with depth below the ridge line (a smooth field, so computed at quarter resolution).
    small_size = (max(1, width // 4), max(1, box_size[1] // 4))
    small = mask.resize(small_size, Image.Resampling.BOX)
    depth = max(1, round(height * (layer.amplitude * 0.6 + layer.massif * 1.5) / 4))
    shifted = Image.new("L", small_size, 0)
    shifted.paste(small, (0, depth))
    band = ImageChops.subtract(small, shifted).filter(ImageFilter.GaussianBlur(depth / 3))
    band = band.resize(box_size, Image.Resampling.BILINEAR)
    slope = Image.composite(slope, Image.new("L", box_size, 128), band)
    shade = ImageChops.add(shade, slope, 1.0, -128)

    # Crest highlight: a thin lit rim just below the ridge line.
    edge = mask.crop(strip)
    shifted = Image.new("L", edge.size, 0)
    shifted.paste(edge, (0, rim * 3))
    crest = ImageChops.subtract(edge, shifted).filter(ImageFilter.GaussianBlur(rim)).point(lambda v: v // 5)
    shade.paste(ImageChops.add(shade.crop(strip), crest), strip)

    colour = ImageOps.colorize(shade, layer.dark, layer.light, layer.mid)
    if layer.haze:
        colour = Image.blend(colour, Image.new("RGB", box_size, _HAZE), layer.haze)
    canvas.paste(colour, (0, top), mask)
    ground.paste(255, (0, top), mask)


def _clear_bands(size: tuple[int, int]) -> list[Span]:
    """For each layer, the vertical span (screen y) where it is visible across the whole width."""
    height = size[1]
    bands: list[Span] = []
    for index, layer in enumerate(_LAYERS):
        start = layer.base * height
        if index + 1 < len(_LAYERS):
            nxt = _LAYERS[index + 1]
            end = (nxt.base - nxt.amplitude) * height
        else:
            end = float(height)
        bands.append((start, end))
    return bands


class _Tracks:
    """A pair of rover wheel tracks on the foreground plain, in ground-plane perspective.

    World coordinates: ``X`` across (camera height units), ``d`` distance ahead. Screen
    ``y = horizon + F / d`` and ``x = centre + F * X / d`` with ``F`` chosen so ``d = 1`` is the bottom row.
    """

    def __init__(self, size: tuple[int, int], far_y: float, rng: random.Random) -> None:
        self.width, self.height = size
        self.horizon = HORIZON * self.height
        self.focal = self.height - self.horizon
        self.d_near = 0.9
        self.d_far = self.focal / max(far_y + 0.02 * self.height - self.horizon, 1.0)
        self.offset = rng.uniform(-0.55, -0.2)
        self.bend = rng.uniform(0.25, 0.5) * rng.choice((-1, 1))
        self.gauge = 1.15  # distance between the wheel tracks
        self.tread = 0.24  # width of one track
        self.grouser = rng.uniform(0.06, 0.075)  # spacing of the wheel-cleat imprints

    def centre(self, d: float) -> float:
        """Lateral position of the track pair's centre line at distance *d*."""
        return self.offset + self.bend * (d - 1.0) ** 2

    def to_screen(self, lateral: float, d: float) -> Point:
        """Project a ground point to screen coordinates."""
        return (self.width / 2 + self.focal * lateral / d, self.horizon + self.focal / d)

    def to_world(self, x: float, y: float) -> Point | None:
        """Back-project a screen point onto the ground plane, or ``None`` above the horizon."""
        if y <= self.horizon + 1:
            return None
        d = self.focal / (y - self.horizon)
        return ((x - self.width / 2) * d / self.focal, d)

    def near(self, x: float, y: float, margin: float) -> bool:
        """Whether the screen point lies within *margin* pixels of either track (berms included)."""
        world = self.to_world(x, y)
        if world is None or world[1] > self.d_far * 1.1:
            return False
        lateral, d = world
        margin_world = margin * d / self.focal
        return abs(abs(lateral - self.centre(d)) - self.gauge / 2) < self.tread * 0.7 + margin_world

    def _strip(
        self, draw: ImageDraw.ImageDraw, side: float, a: float, b: float, d0: float, d1: float, fill: int
    ) -> None:
        """Fill the part of one track between lateral fractions *a*..*b* and distances *d0*..*d1*."""
        steps = max(2, int(6 * (d1 - d0) / max(d0, 1e-6)) + 2)
        ds = [d0 * (d1 / d0) ** (i / (steps - 1)) for i in range(steps)]
        half = self.tread / 2
        left = [self.to_screen(self.centre(d) + side + a * half, d) for d in ds]
        right = [self.to_screen(self.centre(d) + side + b * half, d) for d in reversed(ds)]
        draw.polygon(left + right, fill=fill)

    def draw(self, relief: Image.Image) -> None:
        """Draw both tracks into the *relief* map (128 is neutral, darker is shadow, lighter is lit)."""
        draw = ImageDraw.Draw(relief)
        for side in (-self.gauge / 2, self.gauge / 2):
            self._strip(draw, side, -1.22, 1.22, self.d_near, self.d_far, 140)  # pushed-up berms
            self._strip(draw, side, -1.0, 1.0, self.d_near, self.d_far, 106)  # the groove
            self._strip(draw, side, -1.0, -0.6, self.d_near, self.d_far, 84)  # shadowed sun-side wall
            self._strip(draw, side, 0.7, 1.0, self.d_near, self.d_far, 142)  # lit far wall
            d = self.d_near
            while d < self.d_far:
                y_gap = self.to_screen(0, d)[1] - self.to_screen(0, d + self.grouser)[1]
                if y_gap < 4:
                    break
                self._strip(draw, side, -0.85, 0.6, d, d + self.grouser * 0.22, 88)
                self._strip(draw, side, -0.85, 0.6, d + self.grouser * 0.22, d + self.grouser * 0.34, 136)
                d += self.grouser


def _draw_craters(relief: Image.Image, bands: Sequence[Span], tracks: _Tracks, rng: random.Random) -> None:
    """Add impact craters (raised rim, shadowed bowl, lit far wall) to the relief map."""
    width, height = relief.size
    horizon = HORIZON * height
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(14):
        start, end = bands[rng.randrange(2, len(bands))]
        u, size_pick, x_pick = rng.random(), rng.random(), rng.random()
        y = start + (end - start) * (0.15 + 0.8 * u)
        depth = (y - horizon) / (height - horizon)
        rx = width * (0.02 + 0.11 * size_pick**2) * depth
        ry = rx * min(0.55, 0.12 + 0.5 * depth)
        x = width * (0.05 + 0.9 * x_pick)
        if y - 1.4 * ry < start or y + 1.4 * ry > end or rx < 3 or tracks.near(x, y, rx * 1.5):
            continue
        if any(_crowded((x, y, rx, ry), other) for other in placed):
            continue
        placed.append((x, y, rx, ry))
        _crater(relief, (x, y), rx, ry)


def _crowded(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two craters (x, y, rx, ry) would overlap, ejecta blankets included."""
    return ((a[0] - b[0]) / (a[2] + b[2])) ** 2 + ((a[1] - b[1]) / (a[3] + b[3])) ** 2 < 2.2


def _crater(relief: Image.Image, centre: Point, rx: float, ry: float) -> None:
    """Add one crater, drawn supersampled in its own tile, to the relief map (additively around 128)."""
    ss = 2
    pad = 1.6
    tile_w, tile_h = max(4, int(2 * pad * rx * ss)), max(4, int(2 * pad * ry * ss))
    cx, cy = tile_w / 2, tile_h / 2
    srx, sry = rx * ss, ry * ss

    def oval(scale: float, dx: float = 0.0, dy: float = 0.0) -> tuple[float, float, float, float]:
        return (cx + dx - srx * scale, cy + dy - sry * scale, cx + dx + srx * scale, cy + dy + sry * scale)

    tile = Image.new("L", (tile_w, tile_h), 128)
    draw = ImageDraw.Draw(tile)
    draw.ellipse(oval(1.45), fill=134)  # ejecta blanket
    draw.ellipse(oval(1.12), fill=156)  # raised rim
    draw.ellipse(oval(1.0), fill=72)  # bowl in shadow
    bowl = Image.new("L", tile.size, 0)
    ImageDraw.Draw(bowl).ellipse(oval(1.0), fill=255)
    lit = Image.new("L", tile.size, 0)
    ImageDraw.Draw(lit).ellipse(oval(1.0, 0.22 * srx, 0.06 * sry), fill=255)
    tile.paste(124, (0, 0), ImageChops.multiply(bowl, lit))
    floor = Image.new("L", tile.size, 0)
    ImageDraw.Draw(floor).ellipse(oval(0.45, 0.12 * srx, 0.25 * sry), fill=255)
    tile.paste(110, (0, 0), ImageChops.multiply(bowl, floor))
    tile = tile.filter(ImageFilter.GaussianBlur(max(1.0, sry * 0.08)))
    tile = tile.resize((max(1, tile_w // ss), max(1, tile_h // ss)), Image.Resampling.BOX)
    left, top = round(centre[0] - tile.width / 2), round(centre[1] - tile.height / 2)
    box = (left, top, left + tile.width, top + tile.height)
    region = relief.crop(box)
    relief.paste(ImageChops.add(region, tile, 1.0, -128), box)


def _draw_rocks(canvas: Image.Image, ground: Image.Image, tracks: _Tracks, rng: random.Random) -> None:
    """Scatter faceted, sun-shaded rocks with cast shadows, far ones first so near ones overlap them."""
    width, height = canvas.size
    horizon = HORIZON * height
    top = _LAYERS[1].base * height
    placed: list[tuple[float, float, float, int]] = []
    for _ in range(240):
        # Every candidate draws the same amount of randomness, so the composition is resolution independent.
        t, x_pick, size_pick, rock_seed = rng.random(), rng.random(), rng.random(), rng.getrandbits(32)
        y = top + (height - top) * t**1.6  # crowded toward the horizon, like a real rock field
        x = width * (1.04 * x_pick - 0.02)
        depth = (y - horizon) / (height - horizon)
        rock_w = width * depth * (0.006 + 0.05 * size_pick**4)
        if rock_w < 2.0:
            continue
        if any(_on_sky(ground, px, y + 1) for px in (x - rock_w / 2, x, x + rock_w / 2)):
            continue
        if tracks.near(x, y, rock_w):
            continue
        placed.append((y, x, rock_w, rock_seed))
    for _ in range(4):  # a few big foreground boulders
        y = height * rng.uniform(0.8, 0.97)
        x = width * rng.uniform(0.03, 0.97)
        rock_w = width * rng.uniform(0.035, 0.075) * (y - horizon) / (height - horizon)
        rock_seed = rng.getrandbits(32)
        if not tracks.near(x, y, rock_w * 1.2):
            placed.append((y, x, rock_w, rock_seed))
    for y, x, rock_w, rock_seed in sorted(placed):
        _rock(canvas, (x, y), rock_w, random.Random(rock_seed))


def _on_sky(ground: Image.Image, x: float, y: float) -> bool:
    """Whether the screen point is inside the image and not covered by terrain."""
    xi, yi = int(x), int(y)
    if not (0 <= xi < ground.width and 0 <= yi < ground.height):
        return False
    value = ground.getpixel((xi, yi))
    return isinstance(value, int) and value < 128


def _rock(canvas: Image.Image, base: Point, rock_w: float, rng: random.Random) -> None:
    """Paint one rock standing at *base*: its cast shadow, then a fan of sun-shaded facets, supersampled."""
    ss = 3
    rock_h = rock_w * rng.uniform(0.4, 0.8)
    tile_w, tile_h = int(rock_w * 2.0 * ss) + 4, int(rock_h * 1.4 * ss) + 4
    bx, by = tile_w * 0.3, tile_h - 2.0 * ss - rock_h * 0.06 * ss  # base point inside the tile
    rx, ry = rock_w * ss / 2, rock_h * ss / 2
    cx, cy = bx, by - ry * 0.85

    # Cast shadow: a soft dark ellipse trailing to the lower right on the ground.
    shadow = Image.new("L", (tile_w, tile_h), 0)
    ImageDraw.Draw(shadow).ellipse(
        (bx - rx * 0.7, by - ry * 0.35, bx + rx * 2.1, by + ry * 0.25), fill=rng.randint(120, 160)
    )
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(1.0, ry * 0.18)))

    count = rng.randint(7, 11)
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(count))
    outline: list[Point] = []
    for angle in angles:
        radius = rng.uniform(0.72, 1.05)
        px, py = cx + math.cos(angle) * rx * radius, cy + math.sin(angle) * ry * radius
        outline.append((px, min(py, by)))  # partly buried: flat along the ground
    peak = (cx - rx * rng.uniform(0.0, 0.3), cy - ry * rng.uniform(0.2, 0.5))

    tone = rng.random()
    dark = _lerp(_ROCK_DARK, (92, 56, 40), tone)
    light = _lerp(_ROCK_LIGHT, (222, 170, 128), tone * 0.6)
    body = Image.new("RGB", (tile_w, tile_h), dark)
    draw = ImageDraw.Draw(body)
    sun = (-0.55, -0.62, 0.56)
    for i, (p0, p1) in enumerate(zip(outline, outline[1:] + outline[:1], strict=True)):
        mx, my = (p0[0] + p1[0]) / 2 - cx, (p0[1] + p1[1]) / 2 - cy
        norm = math.hypot(mx / rx, my / ry) or 1.0
        nx, ny, nz = 1.1 * mx / rx / norm, 1.1 * my / ry / norm, 1.0
        length = math.sqrt(nx * nx + ny * ny + nz * nz)
        lambert = max(0.0, (nx * sun[0] + ny * sun[1] + nz * sun[2]) / length)
        brightness = 0.18 + 0.82 * lambert + rng.uniform(-0.07, 0.07) + (0.03 if i % 2 else 0.0)
        draw.polygon([peak, p0, p1], fill=_lerp(dark, light, brightness))
    mask = Image.new("L", (tile_w, tile_h), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)

    # Pitted, dusty surface.
    grain = _noise(rng, (max(2, tile_w // 6), max(2, tile_h // 6)))
    grain = grain.resize((tile_w, tile_h), Image.Resampling.BICUBIC)
    grain = grain.point(lambda v: 190 + v * 65 // 255)
    body = ImageChops.multiply(body, Image.merge("RGB", (grain, grain, grain)))

    out_size = (max(1, round(tile_w / ss)), max(1, round(tile_h / ss)))
    body = body.resize(out_size, Image.Resampling.BOX)
    mask = mask.resize(out_size, Image.Resampling.BOX)
    shadow = shadow.resize(out_size, Image.Resampling.BOX)
    left, top = round(base[0] - bx / ss), round(base[1] - by / ss)
    canvas.paste(_SHADOW, (left, top, left + out_size[0], top + out_size[1]), shadow)
    canvas.paste(body, (left, top), mask)


def _draw_pebbles(canvas: Image.Image, ground: Image.Image, tracks: _Tracks, rng: random.Random) -> None:
    """Thousands of small stones: a dark body with a lit upper-left cap."""
    width, height = canvas.size
    horizon = HORIZON * height
    top = _LAYERS[2].base * height
    draw = ImageDraw.Draw(canvas)
    for _ in range(6000):
        t, x_pick, size_pick, tone = rng.random(), rng.random(), rng.random(), rng.random()
        y = top + (height - top) * t**1.3
        x = width * x_pick
        depth = (y - horizon) / (height - horizon)
        r = width * depth * (0.0008 + 0.0042 * size_pick**3)
        if r < 0.8 or _on_sky(ground, x, y - r) or tracks.near(x, y, -r):
            continue
        ry = r * (0.45 + 0.3 * depth)
        body = _lerp((58, 36, 26), (120, 74, 48), tone)
        cap = _lerp(body, (226, 178, 136), 0.55 + 0.25 * tone)
        shadow = _lerp(body, (60, 30, 18), 0.4)
        draw.ellipse((x - r * 0.65, y - ry * 0.5, x + r * 1.6, y + ry * 0.9), fill=shadow)
        draw.ellipse((x - r, y - ry, x + r, y + ry), fill=body)
        if r >= 1.5:
            draw.ellipse((x - r * 0.8, y - ry * 0.95, x + r * 0.3, y + ry * 0.1), fill=cap)


def _add_grain(canvas: Image.Image, ground: Image.Image, rng: random.Random) -> Image.Image:
    """Regolith grain on the ground: fine sand plus small clumps, stronger where the ground is nearer."""
    width, height = canvas.size
    fine = _noise(rng, (width, height)).filter(ImageFilter.GaussianBlur(max(0.3, width / 8000)))
    clumps = _noise(rng, (max(2, width // 3), max(2, height // 3)))
    clumps = clumps.resize((width, height), Image.Resampling.BICUBIC)
    grain = Image.blend(fine, clumps, 0.5)
    horizon = HORIZON * height
    span = max(height - horizon, 1.0)
    rows = [0 if y <= horizon else round(30 + 150 * (y - horizon) / span) for y in range(height)]
    amplitude = Image.new("L", (1, height))
    amplitude.putdata(rows)
    amplitude = ImageChops.multiply(amplitude.resize((width, height), Image.Resampling.NEAREST), ground)
    grain = Image.composite(grain, Image.new("L", (width, height), 128), amplitude)
    return ImageChops.hard_light(canvas, Image.merge("RGB", (grain, grain, grain)))


def _fsync_directory(directory: pathlib.Path) -> None:
    """Best-effort ``fsync`` of a directory so the rename itself is durable (no-op where unsupported)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


if __name__ == "__main__":
    import sys

    print(generate_rover_image(sys.argv[1] if len(sys.argv) > 1 else IMAGE_NAME))
