"""Offline BraTS-style brain MRI: `<case>/<case>_{t1,t1ce,t2,flair}.nii.gz` and `<case>_seg.nii.gz`
(BraTS labels: 1 necrotic or non-enhancing core, 2 oedema, 4 enhancing tumour), written with
nibabel, and `labels.csv` (case_id, tumour_class).

Each case is a head (scalp, skull, CSF, grey and white matter, ventricles) with one tumour of
three classes that differ in shape and intensity, as in the clinic:
- `glioblastoma`: large, deep, a necrotic core inside an enhancing ring, wide oedema;
- `low_grade_glioma`: small, irregular, bright on FLAIR and T2, not enhancing;
- `meningioma`: round, at the brain's edge against the skull, enhancing homogeneously.

The last case has no seg file, and (n >= 6) the one before an all-zero mask, so that readers
meet both. Volumes are 96x96x64 voxels of 1x1x2 mm, stored like BraTS (int16, the affine's
x and y axes reversed). Each case depends only on the seed and its index.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (96, 96, 64)
VOXEL_MM = (1.0, 1.0, 2.0)
MODALITIES = ("t1", "t1ce", "t2", "flair")
CLASSES = ("glioblastoma", "low_grade_glioma", "meningioma")
HEAD_MM = np.array([40.0, 45.0, 55.0])  # semi-axes: left-right, anterior-posterior, height
HEAD_CENTRE = np.array([0.0, 0.0, -8.0])  # mm: the crown inside the volume, the neck cut off

# tissue -> (t1, t1ce, t2, flair) signal, and its BraTS label (0: not tumour).
TISSUES: dict[str, tuple[tuple[int, int, int, int], int]] = {
    "air": ((0, 0, 0, 0), 0),
    "scalp": ((1100, 1100, 700, 900), 0),
    "bone": ((150, 160, 120, 130), 0),
    "csf": ((250, 260, 1600, 120), 0),
    "grey_matter": ((620, 640, 900, 700), 0),
    "white_matter": ((820, 840, 650, 560), 0),
    "necrosis": ((300, 320, 1500, 700), 1),
    "ring_enhancing": ((560, 1500, 950, 1000), 4),
    "oedema": ((500, 520, 1250, 1350), 2),
    "lgg_core": ((430, 440, 1350, 1550), 1),
    "lgg_infiltration": ((540, 550, 1150, 1300), 2),
    "meningioma": ((640, 1350, 780, 820), 4),
}
TISSUE_CODES = {name: code for code, name in enumerate(TISSUES)}
World = tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z in mm, broadcastable
SIGNAL = np.array([signal for signal, _ in TISSUES.values()], dtype=np.float32)
SEG_LABEL = np.array([label for _, label in TISSUES.values()], dtype=np.uint8)


def write_brain_mri(out: Path, n: int, seed: int) -> Path:
    """Write `n` cases and `labels.csv` into `out`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    world = _world_mm()
    classes = [CLASSES[i % len(CLASSES)] for i in range(n)]
    np.random.default_rng(seed).shuffle(classes)
    rows = []
    for index, tumour_class in enumerate(classes):
        case_id = f"BraTS_{index + 1:03d}"
        rng = np.random.default_rng([seed, index])
        tissue = _head(world, rng)
        _TUMOURS[tumour_class](tissue, world, rng)
        seg = None if index == n - 1 else SEG_LABEL[tissue]
        if seg is not None and n >= 6 and index == n - 2:
            seg = np.zeros_like(seg)  # a segmentation that found nothing
        _write_case(out / case_id, case_id, tissue, seg, world, rng)
        rows.append((case_id, tumour_class))
    with (out / "labels.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["case_id", "tumour_class"])
        writer.writerows(rows)
    return out


def _affine() -> np.ndarray:
    """BraTS's layout: voxel x runs to the patient's left, y to the back, z up."""
    centre = (np.array(SHAPE) - 1) / 2
    affine = np.diag([-VOXEL_MM[0], -VOXEL_MM[1], VOXEL_MM[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _world_mm() -> World:
    """Each voxel axis's positions in mm (RAS+), shaped to broadcast over the volume."""
    affine = _affine()
    return tuple(
        (affine[axis, axis] * np.arange(size) + affine[axis, 3])
        .astype(np.float32)
        .reshape([size if i == axis else 1 for i in range(3)])
        for axis, size in enumerate(SHAPE)
    )


def _smooth_noise(world: World, rng: np.random.Generator, waves: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a sum of plane waves of 30-120 mm."""
    field = np.zeros(SHAPE, dtype=np.float32)
    for _ in range(waves):
        direction = rng.normal(size=3)
        direction *= rng.uniform(0.05, 0.2) / np.linalg.norm(direction)
        phase = sum(np.float32(d) * w for d, w in zip(direction, world, strict=True))
        field += np.sin(phase + np.float32(rng.uniform(0, 2 * np.pi)))
    return field / np.sqrt(waves / 2)


def _head_radius(world: World) -> np.ndarray:
    """1 on the head's surface, 0 at its centre."""
    return _ellipsoid(world, HEAD_CENTRE, HEAD_MM)


def _head(world: World, rng: np.random.Generator) -> np.ndarray:
    """Tissue codes of a head: scalp, skull, CSF, a folded cortex, white matter, ventricles."""
    radius = _head_radius(world)
    folds = 0.04 * _smooth_noise(world, rng, waves=10)
    tissue = np.full(SHAPE, TISSUE_CODES["air"], dtype=np.uint8)
    for name, outer in (("scalp", 1.0), ("bone", 0.95), ("csf", 0.9), ("grey_matter", 0.87)):
        tissue[radius < outer] = TISSUE_CODES[name]
    tissue[radius + folds < 0.74] = TISSUE_CODES["white_matter"]
    for side in (-1.0, 1.0):  # lateral ventricles, their frontal horns forward
        centre = np.array([side * rng.uniform(6, 8), rng.uniform(2, 8), rng.uniform(0, 6)])
        axes = np.array([4.0, 15.0, 7.0]) * rng.uniform(0.8, 1.2)
        tissue[_ellipsoid(world, centre, axes) < 1] = TISSUE_CODES["csf"]
    return tissue


def _ellipsoid(world: World, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """0 at `centre`, 1 on the ellipsoid of semi-axes `axes` (mm), more outside."""
    parts = (
        ((w - np.float32(c)) / np.float32(a)) ** 2
        for w, c, a in zip(world, centre, axes, strict=True)
    )
    return np.sqrt(sum(parts))


def _inside_brain(world: World, rng: np.random.Generator, depth: float) -> np.ndarray:
    """A random point at `depth` (0 centre, 1 head surface) of the head, above the skull base."""
    direction = rng.normal(size=3) * np.array([1.0, 1.0, 0.6])
    direction[2] = abs(direction[2])
    direction /= np.linalg.norm(direction)
    return HEAD_CENTRE + depth * HEAD_MM * direction


def _paint(tissue: np.ndarray, region: np.ndarray, name: str, brain: np.ndarray) -> None:
    tissue[region & brain] = TISSUE_CODES[name]


def _glioblastoma(tissue: np.ndarray, world: World, rng: np.random.Generator) -> None:
    """Large and deep: necrosis inside an enhancing ring, inside wide oedema."""
    radius = rng.uniform(14, 19)
    centre = _inside_brain(world, rng, rng.uniform(0.2, 0.4))
    distance = _ellipsoid(world, centre, np.full(3, radius)) * (
        1 + 0.12 * _smooth_noise(world, rng)
    )
    brain = _head_radius(world) < 0.88
    _paint(tissue, distance < 1.5, "oedema", brain)
    _paint(tissue, distance < 1.0, "ring_enhancing", brain)
    _paint(tissue, distance < 0.6, "necrosis", brain)


def _low_grade_glioma(tissue: np.ndarray, world: World, rng: np.random.Generator) -> None:
    """Small and irregular, infiltrating: bright on FLAIR, no enhancement."""
    radius = rng.uniform(7, 11)
    centre = _inside_brain(world, rng, rng.uniform(0.3, 0.55))
    distance = _ellipsoid(world, centre, np.full(3, radius)) * (
        1 + 0.3 * _smooth_noise(world, rng, waves=12)
    )
    brain = _head_radius(world) < 0.88
    _paint(tissue, distance < 1.5, "lgg_infiltration", brain)
    _paint(tissue, distance < 0.8, "lgg_core", brain)


def _meningioma(tissue: np.ndarray, world: World, rng: np.random.Generator) -> None:
    """Round, against the skull, enhancing homogeneously; a thin rim of oedema."""
    radius = rng.uniform(10, 14)
    centre = _inside_brain(world, rng, 0.8)
    distance = _ellipsoid(world, centre, np.full(3, radius))
    inside_skull = _head_radius(world) < 0.9
    _paint(tissue, distance < 1.2, "oedema", inside_skull & (tissue != TISSUE_CODES["csf"]))
    _paint(tissue, distance < 1.0, "meningioma", inside_skull)


_TUMOURS = {
    "glioblastoma": _glioblastoma,
    "low_grade_glioma": _low_grade_glioma,
    "meningioma": _meningioma,
}


def _write_case(
    folder: Path,
    case_id: str,
    tissue: np.ndarray,
    seg: np.ndarray | None,
    world: World,
    rng: np.random.Generator,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bias = 1 + 0.08 * _smooth_noise(world, rng, waves=3)  # the coil's smooth inhomogeneity
    for channel, modality in enumerate(MODALITIES):
        clean = SIGNAL[tissue, channel] * bias
        noisy = clean + rng.normal(0, 15, size=SHAPE).astype(np.float32)
        volume = np.where(tissue == TISSUE_CODES["air"], 0, np.clip(noisy, 1, None))
        _save(volume.astype(np.int16), folder / f"{case_id}_{modality}.nii.gz")
    if seg is not None:
        _save(seg, folder / f"{case_id}_seg.nii.gz")


def _save(data: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, _affine())
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
