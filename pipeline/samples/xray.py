"""An offline stand-in for NIH ChestX-ray14 (MedSearch's data set): a folder of PNGs and a CSV.

The layout is the real one: `Data_Entry_2017.csv` with the real header (its bracketed names
split in two by their commas, and a trailing comma), images below the CSV's folder in
`images_001/images/`, named `<patient id>_<follow-up>.png`, 1024x1024 8-bit grayscale. Label
shares, ages, sexes and views follow the real set; patients have several follow-ups. The
pictures are synthetic chests (body, lungs, ribs, clavicles, mediastinum, heart, diaphragm)
whose look depends on the findings, so that similarity search over them finds structure.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NO_FINDING = "No Finding"
# Images per label in ChestX-ray14 (112,120 images, 60,361 with no finding).
LABEL_COUNTS: dict[str, int] = {
    "Infiltration": 19894,
    "Effusion": 13317,
    "Atelectasis": 11559,
    "Nodule": 6331,
    "Mass": 5782,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Pleural_Thickening": 3385,
    "Cardiomegaly": 2776,
    "Emphysema": 2516,
    "Edema": 2303,
    "Fibrosis": 1686,
    "Pneumonia": 1431,
    "Hernia": 227,
}
_IMAGES, _HEALTHY = 112120, 60361
# Long-standing conditions stay with a patient across follow-ups; the others come and go.
_CHRONIC = {"Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening"}
_EXTRA_FOLLOW_UPS = 0.6  # geometric: 1 / (1 + mean extra images per patient)
_MISSING_AGE = 0.01
_MALE = 0.565
_PA = 0.6
_PATIENT_IDS = 30805
_FOLDER = Path("images_001") / "images"

_SIZE = 1024
_N = 256  # drawn on a small canvas and upscaled: far cheaper, and X-rays are smooth anyway


@dataclass(frozen=True)
class Study:
    """One CSV row."""

    patient: int
    follow_up: int
    findings: tuple[str, ...]  # empty: no finding
    age: int | None
    male: bool
    view: str
    original: tuple[int, int]
    spacing: float

    @property
    def image_index(self) -> str:
        return f"{self.patient:08d}_{self.follow_up:03d}.png"

    def row(self) -> list[str]:
        return [
            self.image_index,
            "|".join(self.findings) or NO_FINDING,
            str(self.follow_up),
            str(self.patient),
            "" if self.age is None else f"{self.age:03d}Y",
            "M" if self.male else "F",
            self.view,
            str(self.original[0]),
            str(self.original[1]),
            f"{self.spacing:.3f}",
            f"{self.spacing:.3f}",
            "",  # the header's trailing comma: an empty twelfth column
        ]


_LABELS = list(LABEL_COUNTS)
# Each label drawn on its own: a sick image has about 1.5 findings, as in the real set.
_RATES = np.array(list(LABEL_COUNTS.values())) / (_IMAGES - _HEALTHY) * 0.8
_SICK = 1 - _HEALTHY / _IMAGES


def _studies(rng: np.random.Generator, n: int) -> list[Study]:
    """`n` studies of patients with one or more follow-ups, in the real file's order."""
    sizes = rng.geometric(_EXTRA_FOLLOW_UPS, n)
    count = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:count]
    sizes[-1] -= sizes.sum() - n
    patients = np.sort(rng.choice(max(_PATIENT_IDS, count), count, replace=False) + 1)
    studies = [
        study
        for patient, size in zip(patients, sizes, strict=True)
        for study in _patient_studies(rng, int(patient), int(size))
    ]
    # Readers must cope with missing ages, so a sample of any size shows one.
    if n >= 20 and all(study.age is not None for study in studies):
        i = int(rng.integers(n))
        studies[i] = replace(studies[i], age=None)
    return studies


def _patient_studies(rng: np.random.Generator, patient: int, size: int) -> list[Study]:
    """One patient's follow-ups: same sex, scanner and lasting conditions, ageing slowly."""
    chronic = {label for label in _CHRONIC if rng.random() < 0.5 * _RATES[_LABELS.index(label)]}
    age = int(np.clip(round(rng.normal(47, 17)), 1, 95))
    male, original = bool(rng.random() < _MALE), _original_size(rng)
    spacing = float(rng.choice([0.139, 0.143, 0.168]))
    return [
        Study(
            patient=patient,
            follow_up=follow_up,
            findings=_findings(rng, chronic),
            age=None if rng.random() < _MISSING_AGE else min(age + follow_up // 3, 95),
            male=male,
            view="PA" if rng.random() < _PA else "AP",
            original=original,
            spacing=spacing,
        )
        for follow_up in range(size)
    ]


def _findings(rng: np.random.Generator, chronic: set[str]) -> tuple[str, ...]:
    findings = set(chronic)
    if rng.random() < _SICK:
        findings |= {label for label, p in zip(_LABELS, _RATES, strict=True) if rng.random() < p}
        findings = findings or {str(rng.choice(_LABELS, p=_RATES / _RATES.sum()))}
    return tuple(sorted(findings))


def _original_size(rng: np.random.Generator) -> tuple[int, int]:
    """The scanner's size before ChestX-ray14 resized every image to 1024x1024."""
    return int(rng.integers(2000, 3057)), int(rng.integers(2000, 3057))


# ---- pictures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """A patient's build: shared by all their follow-ups."""

    width: float  # thorax half-width
    lung_height: float
    heart: float  # heart half-width
    rib_spacing: float
    tissue: float  # soft-tissue brightness


@dataclass
class Chest:
    """One picture being drawn: brightness on the canvas (denser is whiter) and its layout."""

    x: np.ndarray
    y: np.ndarray
    value: np.ndarray
    body: np.ndarray  # 0..1, as `lungs` and `heart`
    lungs: np.ndarray  # how much of each pixel is lung (per side below)
    sides: dict[int, np.ndarray]  # -1: image left (patient's right), +1: image right
    rng: np.random.Generator
    heart: np.ndarray | None = None  # drawn after the lungs

    def paint(self, amount: np.ndarray, level: float) -> None:
        """Blend `level` in where `amount` (0..1) says."""
        amount = np.clip(amount, 0, 1)
        self.value += amount * (level - self.value)

    def blob(self, cx: float, cy: float, radius: float, edge: float = 0.25) -> np.ndarray:
        """A round shape, 1 inside, fading over `edge` of its radius."""
        distance = np.hypot(self.x - cx, self.y - cy) / radius
        return _step((1 - distance) / edge)

    def in_lung(self, side: int) -> tuple[float, float]:
        """A random point well inside one lung."""
        mask = (self.sides[side] > 0.9) & (self.heart < 0.1)
        ys, xs = np.nonzero(mask)
        i = int(self.rng.integers(len(xs)))
        return float(self.x[0, xs[i]]), float(self.y[ys[i], 0])


def _step(t: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + t, 0, 1)


def _noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise with about `cells` blobs across, zero mean and unit std."""
    low = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(low).resize((_N, _N), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(
        width=rng.uniform(0.8, 0.88),
        lung_height=rng.uniform(0.5, 0.6),
        heart=rng.uniform(0.24, 0.29),
        rib_spacing=rng.uniform(0.13, 0.16),
        tissue=rng.uniform(0.53, 0.57),
    )


def _lung(x: np.ndarray, y: np.ndarray, side: int, a: Anatomy, base: float) -> np.ndarray:
    """One lung: narrow at the apex, wide at the base, on a domed diaphragm at `base`."""
    cx, top = side * 0.42 * a.width, base - 2 * a.lung_height
    depth = np.clip((y - top) / (base - top), 0, 1)
    half_width = 0.31 * a.width * (0.45 + 0.55 * np.sqrt(depth))
    across = (x - cx) / half_width
    dome = base - 0.12 * (1 - np.clip(across, -1, 1) ** 2)
    inside = np.minimum(1 - np.abs(across), np.minimum(dome - y, y - top) / 0.3)
    return _step(inside * 12)


def _draw(findings: frozenset[str], view: str, a: Anatomy, rng: np.random.Generator) -> Chest:
    """The chest of this patient, with each finding drawn over it (cardiomegaly, emphysema
    and atelectasis's volume loss change the anatomy itself)."""
    chest = _thorax(findings, a, rng)
    _ribs(chest, a)
    _mediastinum(chest, a, findings, view)
    for finding in sorted(findings & _FINDINGS.keys()):
        _FINDINGS[finding](chest)
    return chest


def _thorax(findings: frozenset[str], a: Anatomy, rng: np.random.Generator) -> Chest:
    """Body and neck on a dark background, and the lungs, mostly air, with vessels fanning out
    from the hila and fading towards the edges."""
    y, x = np.mgrid[-1 : 1 : _N * 1j, -1 : 1 : _N * 1j].astype(np.float32)
    shift = rng.normal(0, 0.03, 2)
    x, y = x + shift[0], y + shift[1]
    body = _step((1 - (np.abs(x) / a.width) ** 4 - ((y - 0.25) / 1.25) ** 4) * 8)
    neck = _step((0.2 - np.abs(x)) * 20) * (y < -0.7)
    value = 0.05 + (a.tissue - 0.05) * np.maximum(body, neck)

    emphysema = "Emphysema" in findings  # hyperinflated: taller, darker, fewer markings
    build = replace(a, lung_height=a.lung_height * (1.12 if emphysema else 1.0))
    sides = {}
    for side in (-1, 1):
        raised = 0.12 if "Atelectasis" in findings and side == -1 else 0.0
        sides[side] = _lung(x, y, side, build, 0.45 - raised)
    lungs = np.maximum(sides[-1], sides[1])
    hilum = np.exp(-((np.abs(x) - 0.22) ** 2 + y**2) / 0.12)
    vessels = np.clip(1 - np.abs(_noise(rng, 18)) / 0.3, 0, 1) * (0.4 + hilum)
    value -= lungs * ((0.34 if emphysema else 0.28) - 0.07 * (0.35 if emphysema else 1) * vessels)
    return Chest(x, y, value, body, lungs, sides, rng)


def _ribs(chest: Chest, a: Anatomy) -> None:
    """Bright bands across each lung, curving down from the spine, and the clavicles."""
    x, y = np.abs(chest.x), chest.y
    bend = y - 0.55 * x + 0.6 * (x - 0.45) ** 2
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * bend / a.rib_spacing)) ** 6
    chest.value += 0.09 * ribs * (0.25 + 0.75 * chest.lungs) * chest.body * (y < 0.45)
    chest.value += 0.12 * np.exp(-(((y + 0.62 - 0.18 * x) / 0.035) ** 2)) * (x < 0.6)


def _mediastinum(chest: Chest, a: Anatomy, findings: frozenset[str], view: str) -> None:
    """Mediastinum and spine down the middle, the heart low and to the patient's left (an AP
    view magnifies it)."""
    x, y = chest.x, chest.y
    chest.paint(_step((0.13 - np.abs(x)) * 25) * (y > -0.75), a.tissue + 0.12)
    chest.paint(_step((0.05 - np.abs(x)) * 40) * 0.6, a.tissue + 0.25)
    heart = a.heart * (1.6 if "Cardiomegaly" in findings else 1.0) * (1.1 if view == "AP" else 1.0)
    shape = ((x - 0.06 - heart * 0.35) / heart) ** 2 + ((y - 0.24) / 0.23) ** 2
    chest.heart = _step((1 - shape) * 6)
    chest.paint(chest.heart, a.tissue + 0.1)


def _effusion(chest: Chest) -> None:
    """Fluid in the base: whiter, with a meniscus rising to the side (a blunted angle)."""
    for side in _some_sides(chest.rng):
        level = chest.rng.uniform(0.1, 0.28) + 0.25 * np.abs(chest.x - side * 0.1)
        chest.paint(chest.sides[side] * _step((chest.y - (0.45 - level)) * 20), 0.68)


def _pneumothorax(chest: Chest) -> None:
    """Air round a collapsed lung: a black rim with no markings, edged by a thin white line."""
    side = int(chest.rng.choice([-1, 1]))
    lung = chest.sides[side]
    reach = (np.abs(chest.x) * (lung > 0.5)).max(axis=1, keepdims=True)  # per row
    edge = np.abs(chest.x) - reach + chest.rng.uniform(0.08, 0.16)
    chest.paint(lung * _step(edge * 30), 0.03)
    chest.value += 0.15 * lung * np.exp(-((edge / 0.008) ** 2))


def _nodule(chest: Chest) -> None:
    for _ in range(int(chest.rng.integers(1, 5))):
        cx, cy = chest.in_lung(int(chest.rng.choice([-1, 1])))
        chest.paint(chest.blob(cx, cy, chest.rng.uniform(0.025, 0.045)), 0.75)


def _mass(chest: Chest) -> None:
    cx, cy = chest.in_lung(int(chest.rng.choice([-1, 1])))
    radius = chest.rng.uniform(0.09, 0.15)
    lobes = 1 + 0.12 * _noise(chest.rng, 5)
    chest.paint(chest.blob(cx, cy, radius * lobes, edge=0.15), 0.72)


def _infiltration(chest: Chest) -> None:
    """Patchy, hazy opacities scattered over both lungs."""
    chest.paint(0.6 * chest.lungs * np.clip(_noise(chest.rng, 7) - 0.4, 0, 1), 0.6)


def _pneumonia(chest: Chest) -> None:
    """A fluffy opacity in one lower zone."""
    cx, cy = chest.in_lung(int(chest.rng.choice([-1, 1])))
    patch = chest.blob(cx, max(cy, 0.1), 0.28, edge=1.0) * (0.7 + 0.3 * _noise(chest.rng, 10))
    chest.paint(0.85 * patch * chest.lungs, 0.62)


def _consolidation(chest: Chest) -> None:
    """A dense, evenly white lobe with a sharp fissure above it."""
    side = int(chest.rng.choice([-1, 1]))
    fissure = chest.rng.uniform(-0.25, 0.15) + 0.15 * chest.x * side
    chest.paint(chest.sides[side] * _step((chest.y - fissure) * 40), 0.7)


def _edema(chest: Chest) -> None:
    """Haze fanning out from both hila (a bat's wing)."""
    wing = np.exp(-((np.abs(chest.x) - 0.25) ** 2 / 0.05 + (chest.y - 0.02) ** 2 / 0.09))
    chest.paint(0.75 * wing * chest.lungs, 0.62)


def _fibrosis(chest: Chest) -> None:
    """Coarse reticular lines, worst in the periphery."""
    net = np.clip(1 - np.abs(_noise(chest.rng, 30)) / 0.25, 0, 1)
    periphery = np.clip((np.abs(chest.x) - 0.25) * 3, 0, 1)
    chest.value += 0.22 * net * periphery * chest.lungs


def _pleural_thickening(chest: Chest) -> None:
    """A white band lining the chest wall and the apex."""
    for side in _some_sides(chest.rng):
        lung = chest.sides[side]
        edge = lung * (1 - np.clip((lung - 0.05) * 1.1, 0, 1))
        rim = np.maximum(edge, _step((np.abs(chest.x) - 0.55) * 25) * lung * (chest.y < 0.2))
        chest.paint(0.8 * rim, 0.7)


def _atelectasis(chest: Chest) -> None:
    """Volume loss (the raised diaphragm is drawn with the lung) and a plate of collapse."""
    side = int(chest.rng.choice([-1, 1]))
    level = chest.rng.uniform(0.0, 0.25)
    plate = np.exp(-(((chest.y - level - 0.1 * chest.x * side) / 0.03) ** 2))
    chest.paint(0.9 * plate * chest.sides[side], 0.65)


def _hernia(chest: Chest) -> None:
    """A hiatus hernia: a round shadow behind the heart holding a bubble of air."""
    cy = chest.rng.uniform(0.3, 0.38)
    chest.paint(chest.blob(0.02, cy, 0.12), 0.8)
    chest.paint(chest.blob(0.02, cy, 0.08) * (chest.y < cy), 0.15)


def _some_sides(rng: np.random.Generator) -> list[int]:
    return [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]


# Drawn over the anatomy; cardiomegaly and emphysema change the anatomy itself.
_FINDINGS: dict[str, Callable[[Chest], None]] = {
    "Atelectasis": _atelectasis,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Effusion": _effusion,
    "Fibrosis": _fibrosis,
    "Hernia": _hernia,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pleural_Thickening": _pleural_thickening,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
}


def render(study: Study, anatomy: Anatomy, rng: np.random.Generator) -> Image.Image:
    """The 1024x1024 8-bit picture of one study."""
    chest = _draw(frozenset(study.findings), study.view, anatomy, rng)
    exposure = chest.value * rng.uniform(0.96, 1.04) + rng.normal(0, 0.015, chest.value.shape)
    pixels = (np.clip(exposure, 0, 1) ** rng.uniform(0.95, 1.05) * 255).astype(np.uint8)
    soft = Image.fromarray(pixels, mode="L").filter(ImageFilter.GaussianBlur(0.8))
    return soft.resize((_SIZE, _SIZE), Image.Resampling.BICUBIC)


def write_xray(out: Path, n: int, seed: int = 0) -> Path:
    """Writes `out/Data_Entry_2017.csv` and `out/images_001/images/*.png`; returns the CSV's
    path (the dataset to ingest). Deterministic for a given `seed`; a patient's follow-ups
    share their build."""
    studies = _studies(np.random.default_rng((seed, 0)), n)
    folder = out / _FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, study in enumerate(studies):
        anatomy = _anatomy(np.random.default_rng((seed, 1, study.patient)))
        picture = render(study, anatomy, np.random.default_rng((seed, 2, i)))
        picture.save(folder / study.image_index, compress_level=1)
    table = out / "Data_Entry_2017.csv"
    with table.open("w", newline="") as file:
        file.write(HEADER + "\n")
        csv.writer(file, lineterminator="\n").writerows(study.row() for study in studies)
    return table
