"""A small Fruits-360-shaped collection, generated so a newcomer can run the pipeline with no download.

Layout: DIR/Training/<class>/<n>_100.jpg and DIR/Test/<class>/<n>_100.jpg, 100x100 JPEGs on a white
background. Each class has its own colour, shape and texture, with random position, size, rotation and
lighting per image, so features and PCA show real structure. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

FRUITS = (
    "Apple Braeburn", "Apple Granny Smith", "Apricot", "Avocado", "Banana", "Blueberry", "Cactus fruit",
    "Cantaloupe", "Cherry", "Clementine", "Cocos", "Dates", "Fig", "Grape Blue", "Grapefruit Pink",
    "Guava", "Kiwi", "Lemon", "Lime", "Lychee", "Mango", "Mangostan", "Nectarine", "Orange", "Papaya",
    "Passion Fruit", "Peach", "Pear", "Pepino", "Physalis", "Pineapple", "Plum", "Pomegranate",
    "Quince", "Rambutan", "Raspberry", "Redcurrant", "Salak", "Strawberry", "Tamarillo", "Tangelo",
    "Tomato", "Walnut", "Watermelon",
)


@dataclass(frozen=True)
class SampleSpec:
    """How big the generated collection is: classes, images per class and split, image size, JPEG quality, seed."""

    classes: int = 6
    train_per_class: int = 30
    test_per_class: int = 10
    size: int = 100
    quality: int = 95
    seed: int = 0
    total: int | None = None  # exact number of images, spread over the classes (Training only, unless test_share)
    test_share: float = 0.0  # with `total`: the share of each class's images that goes to Test

    def counts(self, class_index: int) -> tuple[tuple[str, int], ...]:
        """(split, images) for one class."""
        if self.total is not None:
            share = self.total // self.classes + (class_index < self.total % self.classes)
            test = round(share * self.test_share)
            return (("Training", share - test), ("Test", test)) if test else (("Training", share),)
        return (("Training", self.train_per_class), ("Test", self.test_per_class))


def class_names(count: int) -> list[str]:
    """`count` class names: the fruit list, numbered variants once it runs out (131 for Fruits-360)."""
    names = list(FRUITS[:count])
    variant = 2
    while len(names) < count:
        names.extend(f"{fruit} {variant}" for fruit in FRUITS[: count - len(names)])
        variant += 1
    return names


def make_sample(directory: str | Path, spec: SampleSpec = SampleSpec(), processes: int = 1) -> int:
    """Write the collection under `directory` (classes spread over `processes` processes: the same files
    whatever the number); returns the number of images written."""
    write = partial(_write_class, Path(directory), spec)
    if processes <= 1:
        return sum(map(write, range(spec.classes)))
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.imap_unordered(write, range(spec.classes)))


def _write_class(root: Path, spec: SampleSpec, class_index: int) -> int:
    """Every image of one class; returns how many."""
    name = class_names(spec.classes)[class_index]
    style = np.random.default_rng([spec.seed, class_index])
    base = style.integers(30, 230, 3)
    aspect, lobes, texture = style.uniform(0.6, 1.0), int(style.integers(0, 4)), style.uniform(0, 40)
    written = 0
    for split, count in spec.counts(class_index):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([spec.seed, class_index, split == "Test", index])
            image = render_fruit(rng, spec.size, base, aspect, lobes, texture)
            data = simplejpeg.encode_jpeg(image, quality=spec.quality, colorspace="RGB")
            (folder / f"{index}_{spec.size}.jpg").write_bytes(data)
            written += 1
    return written


def render_fruit(rng: np.random.Generator, size: int, base: np.ndarray, aspect: float, lobes: int,
                 texture: float) -> np.ndarray:
    """One fruit-like blob on white: class colour, shape and texture; per-image pose and lighting."""
    image = np.full((size, size, 3), 255, np.uint8)
    centre = (int(size / 2 + rng.normal(0, size * 0.04)), int(size / 2 + rng.normal(0, size * 0.04)))
    radius = size * rng.uniform(0.28, 0.4)
    axes = (int(radius), int(radius * aspect))
    colour = np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 8, 3), 0, 255)
    angle = float(rng.uniform(0, 180))
    cv2.ellipse(image, centre, axes, angle, 0, 360, colour.tolist(), -1, cv2.LINE_AA)
    for lobe in range(lobes):
        theta = np.deg2rad(angle + lobe * 360 / max(lobes, 1))
        offset = (int(centre[0] + np.cos(theta) * radius * 0.6), int(centre[1] + np.sin(theta) * radius * 0.6))
        cv2.circle(image, offset, int(radius * 0.45), (colour * 0.85).tolist(), -1, cv2.LINE_AA)
    mask = image.min(axis=2) < 250
    noise = rng.normal(0, texture, (size, size, 1)) + rng.normal(0, 4, (size, size, 3))
    highlight = np.exp(-(((np.arange(size)[:, None] - centre[1] + radius / 3) ** 2
                          + (np.arange(size)[None, :] - centre[0] + radius / 3) ** 2) / (2 * (radius / 2.5) ** 2)))
    shaded = image.astype(np.float32) + noise + 60 * highlight[:, :, None]
    image[mask] = np.clip(shaded, 0, 255).astype(np.uint8)[mask]
    return image
