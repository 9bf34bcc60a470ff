"""An offline stand-in for the Hugging Face dataset `marmal88/skin_cancer` (HAM10000).

Same columns, types and file layout as the real dataset, so `load_dataset(str(out_dir),
split="train")` reads it; the class imbalance and metadata follow HAM10000, and the
pictures are synthetic lesions whose look depends on `dx`, so that similarity search over
them finds structure rather than noise.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from pipeline.sources.hf import field_type

datasets.disable_progress_bars()

# What generic code needs to know about this set, said here and nowhere else.
LABEL_FIELD = "dx"  # `--label-field` for quality, group-by and colouring (no ClassLabel column)
KEY_FIELD = "image_id"
DEMO_QUERY_LABEL = "melanoma"  # the demo queries with the first image of this class
# The Qdrant skin-lesion notebook's searches (title, `medindex search` arguments).
NOTEBOOK_SEARCHES: list[tuple[str, list[str]]] = [
    ("top 5 by similarity", ["--limit", "5"]),
    (
        "female, age >= 55 (the notebook's filter)",
        ["--limit", "5", "--filter", '{"must": [{"key": "sex", "match": {"value": "female"}}], '
         '"should": [{"key": "age", "range": {"gte": 55}}]}'],
    ),
    (
        "not a nevus, on back/trunk/chest",
        ["--limit", "5", "--filter", '{"must_not": [{"key": "dx", "match": {"value": '
         '"melanocytic_Nevi"}}], "must": [{"key": "localization", "match": {"any": '
         '["back", "trunk", "chest"]}}]}'],
    ),
    ("above a score threshold", ["--limit", "5", "--score-threshold", "0.9"]),
    ("most similar case per diagnosis", ["--group-by", LABEL_FIELD, "--limit", "7"]),
]  # fmt: skip
# The store benchmark's filtered search: the notebook's filter with both conditions required.
BENCH_FILTER = {
    "must": [{"key": "sex", "match": {"value": "female"}}, {"key": "age", "range": {"gte": 55}}]
}
BENCH_FILTER_TEXT = "sex = female and age >= 55"


def payload_indexes() -> dict[str, str]:
    """The payload index types the pipeline gives this set's fields (its schema's)."""
    return {name: kind for name, feature in _FEATURES.items() if (kind := field_type(feature))}


def demo_query(out_dir: Path) -> tuple[str, str]:
    """(key, label) of the image the demo queries with: the first of `DEMO_QUERY_LABEL`."""
    table = datasets.load_dataset(str(out_dir), split="train")
    rows = table.select_columns([KEY_FIELD, LABEL_FIELD])
    chosen = next((r for r in rows if r[LABEL_FIELD] == DEMO_QUERY_LABEL), rows[0])
    return chosen[KEY_FIELD], chosen[LABEL_FIELD]


# Class shares in HAM10000 (6705/1113/1099/514/327/142/115 of 10015 images).
DX_WEIGHTS: dict[str, float] = {
    "melanocytic_Nevi": 0.6695,
    "melanoma": 0.1111,
    "benign_keratosis-like_lesions": 0.1097,
    "basal_cell_carcinoma": 0.0513,
    "actinic_keratoses": 0.0327,
    "vascular_lesions": 0.0142,
    "dermatofibroma": 0.0115,
}

# Nevi are often confirmed by follow-up, the rest mostly by histology; overall this gives
# HAM10000's mix (histo ~0.53, follow_up ~0.37, consensus ~0.09, confocal ~0.01).
_DX_TYPES = ["histo", "follow_up", "consensus", "confocal"]
_DX_TYPE_WEIGHTS_NEVI = [0.40, 0.55, 0.05, 0.0]
_DX_TYPE_WEIGHTS_OTHER = [0.80, 0.0, 0.16, 0.04]

# Mean patient age per class; nevi come from younger patients than carcinomas.
_MEAN_AGE = {
    "melanocytic_Nevi": 45.0,
    "melanoma": 60.0,
    "benign_keratosis-like_lesions": 63.0,
    "basal_cell_carcinoma": 66.0,
    "actinic_keratoses": 67.0,
    "vascular_lesions": 50.0,
    "dermatofibroma": 52.0,
}
_MISSING_AGE = 0.01
_SEXES = ["male", "female", "unknown"]
_SEX_WEIGHTS = [0.54, 0.45, 0.01]
# Image counts per body site in HAM10000.
_LOCALIZATIONS = {
    "back": 2192,
    "lower extremity": 2077,
    "trunk": 1404,
    "upper extremity": 1118,
    "abdomen": 1022,
    "face": 745,
    "chest": 407,
    "foot": 319,
    "unknown": 234,
    "neck": 168,
    "scalp": 128,
    "hand": 90,
    "ear": 56,
    "genital": 48,
    "acral": 7,
}
_EXTRA_IMAGES_PER_LESION = 0.4  # HAM10000 has ~1.4 images per lesion
_FIRST_IMAGE_ID = 24306  # ISIC_0024306 is HAM10000's first image

_FEATURES = Features(
    {
        "image": Image(),
        "image_id": Value("string"),
        "lesion_id": Value("string"),
        "dx": Value("string"),
        "dx_type": Value("string"),
        "age": Value("float64"),
        "sex": Value("string"),
        "localization": Value("string"),
    }
)

# Pictures are drawn on a small canvas and upscaled to the real 600x450: a lot cheaper,
# and the upscale's blur reads as the soft focus of a dermatoscope.
_SIZE = (600, 450)
_H, _W = 150, 200
_JPEG_QUALITY = 90

Rgb = tuple[float, float, float]


@dataclass(frozen=True)
class _Geometry:
    """Where a lesion lies on the canvas: `rho` is 0 at its centre and 1 on its border."""

    x: np.ndarray
    y: np.ndarray
    cx: float
    cy: float
    radius: float
    rho: np.ndarray
    theta: np.ndarray


def _noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth noise with about `cells` blobs across the height, zero mean and unit std."""
    low = rng.standard_normal((cells, cells * _W // _H)).astype(np.float32)
    field = np.asarray(PILImage.fromarray(low).resize((_W, _H), PILImage.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _ridges(rng: np.random.Generator, cells: int, width: float) -> np.ndarray:
    """Thin branching lines (the zero set of smooth noise): vessels, networks, furrows."""
    return np.clip(1.0 - np.abs(_noise(rng, cells)) / width, 0.0, 1.0)


def _dots(
    rng: np.random.Generator, g: _Geometry, count: int, size: float, spread: float
) -> np.ndarray:
    """Round blobs scattered inside the lesion, up to `spread` of its radius from the centre."""
    r = g.radius * spread * np.sqrt(rng.random(count))
    a = rng.random(count) * 2 * np.pi
    px, py = g.cx + r * np.cos(a), g.cy + r * np.sin(a)
    s = size * rng.uniform(0.6, 1.4, count)
    d2 = (g.x[None] - px[:, None, None]) ** 2 + (g.y[None] - py[:, None, None]) ** 2
    return np.exp(-d2 / (2 * s[:, None, None] ** 2)).max(axis=0)


def _paint(rgb: np.ndarray, amount: np.ndarray, colour: Rgb) -> np.ndarray:
    return rgb + amount[..., None] * (np.asarray(colour) - rgb)


# Textures: each paints dermoscopic structures typical of its class over the lesion colour.
def _nevus(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    network = _ridges(rng, 30, 0.35) * np.clip(1.2 - g.rho, 0, 1)  # regular pigment network
    return _paint(rgb, 0.45 * network, (0.30, 0.18, 0.12))


def _melanoma(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    blotches = np.clip(_noise(rng, 5), 0, 1)  # asymmetric blue-grey veil and black blotches
    rgb = _paint(rgb, 0.7 * blotches, (0.36, 0.40, 0.52))
    rgb = _paint(rgb, 0.8 * np.clip(-_noise(rng, 6) - 0.3, 0, 1), (0.10, 0.06, 0.06))
    spokes = rng.integers(14, 24)
    phase = 0.8 * _noise(rng, 4)
    streaks = (0.5 + 0.5 * np.cos(spokes * g.theta + phase)) ** 6 * np.clip(g.rho * 3 - 2, 0, 1)
    rgb = _paint(rgb, 0.8 * streaks, (0.15, 0.08, 0.07))  # radial streaming at the edge
    return _paint(rgb, 0.6 * _dots(rng, g, 25, 1.2, 0.9), (0.08, 0.05, 0.05))


def _keratosis(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    furrows = _ridges(rng, 14, 0.25)  # cerebriform ridges and fissures
    rgb = _paint(rgb, 0.5 * furrows, (0.40, 0.27, 0.18))
    return _paint(rgb, 0.8 * _dots(rng, g, 10, 1.5, 0.8), (0.95, 0.92, 0.82))  # milia cysts


def _carcinoma(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    vessels = _ridges(rng, 9, 0.12)  # arborising vessels on a pearly pink base
    rgb = _paint(rgb, 0.85 * vessels, (0.70, 0.12, 0.18))
    return _paint(rgb, 0.75 * _dots(rng, g, 6, 3.0, 0.7), (0.35, 0.38, 0.48))  # blue-grey nests


def _actinic(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    rgb = _paint(rgb, 0.5 * _ridges(rng, 22, 0.3), (0.78, 0.30, 0.30))  # strawberry pattern
    scale = np.clip(_noise(rng, 40) - 1.0, 0, 1)  # white scale
    return _paint(rgb, scale, (0.96, 0.93, 0.88))


def _vascular(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    return _paint(rgb, 0.8 * _dots(rng, g, 18, 3.0, 0.85), (0.35, 0.03, 0.14))  # lacunae


def _dermatofibroma(rgb: np.ndarray, g: _Geometry, rng: np.random.Generator) -> np.ndarray:
    scar = np.clip(1.6 - 2.5 * g.rho + 0.3 * _noise(rng, 8), 0, 1)  # central white scar
    rgb = _paint(rgb, 0.85 * scar, (0.94, 0.89, 0.86))
    return _paint(rgb, 0.35 * _ridges(rng, 30, 0.3) * (1 - scar), (0.50, 0.33, 0.25))


@dataclass(frozen=True)
class _Look:
    """How one class is drawn."""

    core: Rgb  # colour at the lesion's centre
    rim: Rgb  # colour towards its border
    radius: tuple[float, float]  # range of radii, as a share of the canvas height
    wobble: float  # border irregularity: 0 is a circle
    edge: float  # border softness, in units of the radius
    texture: Callable[[np.ndarray, _Geometry, np.random.Generator], np.ndarray]


_LOOKS = {
    "melanocytic_Nevi": _Look(
        (0.42, 0.26, 0.18), (0.62, 0.43, 0.32), (0.18, 0.26), 0.04, 0.04, _nevus
    ),
    "melanoma": _Look((0.22, 0.13, 0.11), (0.48, 0.30, 0.24), (0.28, 0.38), 0.22, 0.03, _melanoma),
    "benign_keratosis-like_lesions": _Look(
        (0.58, 0.42, 0.30), (0.70, 0.54, 0.42), (0.22, 0.32), 0.10, 0.02, _keratosis
    ),
    "basal_cell_carcinoma": _Look(
        (0.90, 0.70, 0.70), (0.86, 0.62, 0.60), (0.20, 0.30), 0.12, 0.06, _carcinoma
    ),
    "actinic_keratoses": _Look(
        (0.86, 0.48, 0.45), (0.84, 0.56, 0.52), (0.22, 0.32), 0.15, 0.15, _actinic
    ),
    "vascular_lesions": _Look(
        (0.62, 0.10, 0.22), (0.72, 0.22, 0.32), (0.14, 0.22), 0.05, 0.03, _vascular
    ),
    "dermatofibroma": _Look(
        (0.80, 0.66, 0.58), (0.62, 0.44, 0.34), (0.11, 0.16), 0.06, 0.08, _dermatofibroma
    ),
}


def _render(dx: str, lesion_rng: np.random.Generator, rng: np.random.Generator) -> bytes:
    """JPEG of one image: `lesion_rng` fixes the lesion and the skin (shared by all images
    of a lesion), `rng` this photograph's framing, exposure and texture detail."""
    look = _LOOKS[dx]
    skin = np.array([0.88, 0.70, 0.62]) * lesion_rng.uniform(0.9, 1.05) + lesion_rng.normal(
        0, 0.012, 3
    )
    radius = lesion_rng.uniform(*look.radius) * _H
    harmonics = np.arange(1, 7)
    amplitude = look.wobble * lesion_rng.standard_normal(6) / harmonics**0.5
    phases = lesion_rng.random(6) * 2 * np.pi
    tint = lesion_rng.normal(0, 0.03, 3)

    y, x = np.mgrid[0:_H, 0:_W].astype(np.float32)
    cx = _W / 2 + rng.normal(0, 0.08) * _W
    cy = _H / 2 + rng.normal(0, 0.08) * _H
    radius *= rng.uniform(0.9, 1.1)
    theta = np.arctan2(y - cy, x - cx) + rng.random() * 2 * np.pi  # rotation
    border = radius * np.clip(1 + np.cos(harmonics * theta[..., None] + phases) @ amplitude, 0.5, 2)
    rho = np.hypot(x - cx, y - cy) / border
    g = _Geometry(x, y, cx, cy, radius, rho, theta)

    core, rim = np.asarray(look.core) + tint, np.asarray(look.rim) + tint
    lesion = look.texture(core + np.clip(rho, 0, 1)[..., None] ** 1.5 * (rim - core), g, rng)
    alpha = 1 / (1 + np.exp(np.clip((rho - 1) / look.edge, -50, 50)))
    skin_field = skin + 0.015 * _noise(rng, 6)[..., None]
    rgb = skin_field + alpha[..., None] * (lesion - skin_field)

    # Dermatoscope: darkened corners, uneven exposure, sensor noise.
    corner = np.hypot((x - _W / 2) / (_W / 2), (y - _H / 2) / (_H / 2))
    rgb *= (1 - rng.uniform(0.1, 0.5) * np.clip(corner - 0.9, 0, 1))[..., None]
    rgb = rgb * rng.uniform(0.9, 1.1) + rng.normal(0, 0.015, rgb.shape)

    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    picture = PILImage.fromarray(pixels).resize(_SIZE, PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _lesions(rng: np.random.Generator, n: int) -> list[dict]:
    """Lesion records with their image counts, summing to `n` images."""
    sizes = 1 + rng.poisson(_EXTRA_IMAGES_PER_LESION, n)
    count = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:count]
    sizes[-1] -= sizes.sum() - n
    ids = rng.permutation(max(10_000, count))[:count]
    dxs, dx_weights = list(DX_WEIGHTS), list(DX_WEIGHTS.values())
    sites = list(_LOCALIZATIONS)
    site_weights = np.array(list(_LOCALIZATIONS.values())) / sum(_LOCALIZATIONS.values())
    lesions = []
    for number, (lesion_id, size) in enumerate(zip(ids, sizes, strict=True)):
        dx = str(rng.choice(dxs, p=dx_weights))
        dx_type_weights = (
            _DX_TYPE_WEIGHTS_NEVI if dx == "melanocytic_Nevi" else _DX_TYPE_WEIGHTS_OTHER
        )
        age = float(np.clip(round(rng.normal(_MEAN_AGE[dx], 15) / 5) * 5, 0, 85))
        lesions.append(
            {
                "number": number,
                "size": int(size),
                "lesion_id": f"HAM_{lesion_id:07d}",
                "dx": dx,
                "dx_type": str(rng.choice(_DX_TYPES, p=dx_type_weights)),
                "age": None if rng.random() < _MISSING_AGE else age,
                "sex": str(rng.choice(_SEXES, p=_SEX_WEIGHTS)),
                "localization": str(rng.choice(sites, p=site_weights)),
            }
        )
    # Consumers must cope with missing ages, so make sure a sample of any size shows one.
    if n >= 20 and all(lesion["age"] is not None for lesion in lesions):
        lesions[int(rng.integers(count))]["age"] = None
    return lesions


def write_sample_dataset(out_dir: Path, n: int, seed: int = 0) -> Path:
    """Writes out_dir/data/train-00000-of-00001.parquet; returns out_dir.

    Deterministic for a given `seed`; images of one lesion share its metadata and look.
    """
    meta_rng = np.random.default_rng((seed, 0))
    lesions = _lesions(meta_rng, n)
    rows = [lesion for lesion in lesions for _ in range(lesion["size"])]
    rows = [rows[i] for i in meta_rng.permutation(n)]

    columns: dict[str, list] = {name: [] for name in _FEATURES}
    for i, lesion in enumerate(rows):
        lesion_rng = np.random.default_rng((seed, 1, lesion["number"]))
        image = _render(lesion["dx"], lesion_rng, np.random.default_rng((seed, 2, i)))
        columns["image"].append({"bytes": image, "path": None})
        columns["image_id"].append(f"ISIC_{_FIRST_IMAGE_ID + i:07d}")
        for name in ("lesion_id", "dx", "dx_type", "age", "sex", "localization"):
            columns[name].append(lesion[name])

    path = out_dir / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=_FEATURES).to_parquet(str(path))
    return out_dir


def sample_metadata(n: int, seed: int = 0) -> list[dict]:
    """`n` payloads shaped like the sample dataset's rows (no images: for store benchmarks);
    a missing age is left out, as the pipeline leaves it out."""
    lesions = _lesions(np.random.default_rng((seed, 0)), n)
    rows = [lesion for lesion in lesions for _ in range(lesion["size"])]
    fields = ("lesion_id", "dx", "dx_type", "age", "sex", "localization")
    return [
        {"image_id": f"ISIC_{_FIRST_IMAGE_ID + i:07d}"}
        | {name: row[name] for name in fields if row[name] is not None}
        for i, row in enumerate(rows)
    ]
