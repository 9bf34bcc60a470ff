"""The audit's quality on planted duplicates, per format, transformation and tier: pairwise
precision and recall, and per planted cluster. `make bench-audit`; figures in BENCHMARKS.md.

    .venv/bin/python docs/audit_quality.py [--model facebook/dino-vits16] [--json]

Per format, sample data is written (skin JPEGs as the Hugging Face set holds them, ChestX-ray14
PNGs, DICOM CT series, BraTS NIfTI cases), originals are picked and each is transformed; every
image is fingerprinted as ingest does (`pipeline.fingerprint`, through the format's reader for
DICOM and NIfTI), and every pair is judged by the audit's own code: a hash-tier candidate is
what the index returns (the same sha256 or pixels, or a shared band), confirmed by
`pipeline.neighbours` (`_hash_edge`); the embedding tier by the threshold `pipeline.audit`
derives from the nearest-neighbour distribution. A pair is planted when both images come from
one original; every other pair is a negative, the hard ones named (one lesion's or one
patient's other images, the other modalities of a case, a series' adjacent slices).

`--model`: the embedding tier's model (default: a ViT-S/16 of random weights built locally,
whose figures are NOT meaningful: the hash tiers' are). With real weights:
    .venv/bin/python docs/audit_quality.py --model facebook/dino-vits16
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import nibabel as nib
import numpy as np
from PIL import Image, ImageEnhance
from pydicom import dcmread
from pydicom.uid import generate_uid

from pipeline.audit import thresholds
from pipeline.fingerprint import fingerprint
from pipeline.neighbours import AuditPlan, Edge, Facts, _hash_edge
from pipeline.picture import to_picture
from pipeline.samples.brain_mri import write_brain_mri
from pipeline.samples.dicom import write_dicom
from pipeline.samples.skin import write_sample_dataset
from pipeline.samples.xray import write_xray
from pipeline.schemas import ReadOptions
from pipeline.settings import get_settings
from pipeline.sources import SourceRow, resolve
from pipeline.sources.dicom import DicomSource
from pipeline.sources.nifti import NiftiSource

MAX = 256 * 1024 * 1024
PLAN = AuditPlan(collection="bench")


def _encoded(picture: Image.Image, fmt: str, **how: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **how)
    return buffer.getvalue()


def _crop(picture: Image.Image, share: float) -> Image.Image:
    dx, dy = int(picture.width * share / 2), int(picture.height * share / 2)
    return picture.crop((dx, dy, picture.width - dx, picture.height - dy))


def _noise(picture: Image.Image, sigma: float) -> Image.Image:
    pixels = np.asarray(picture, dtype=np.float64)
    noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _gamma(picture: Image.Image, gamma: float) -> Image.Image:
    return picture.point(
        [round(255 * (i / 255) ** gamma) for i in range(256)] * len(picture.getbands())
    )


# name -> what it makes of an original's decoded picture and its bytes (encoded again as PNG
# unless the transformation is an encoding).
IMAGE_TRANSFORMS: dict[str, Callable[[Image.Image, bytes], bytes]] = {
    "byte copy": lambda p, data: data,
    "jpeg q95": lambda p, data: _encoded(p.convert("RGB"), "JPEG", quality=95),
    "jpeg q75": lambda p, data: _encoded(p.convert("RGB"), "JPEG", quality=75),
    "jpeg q50": lambda p, data: _encoded(p.convert("RGB"), "JPEG", quality=50),
    "png<->jpeg": lambda p, data: _encoded(p, "PNG" if data[:2] == b"\xff\xd8" else "JPEG"),
    "resize 0.9": lambda p, data: _encoded(
        p.resize((int(p.width * 0.9), int(p.height * 0.9))), "PNG"
    ),
    "resize 0.7": lambda p, data: _encoded(
        p.resize((int(p.width * 0.7), int(p.height * 0.7))), "PNG"
    ),
    "resize 0.5": lambda p, data: _encoded(p.resize((p.width // 2, p.height // 2)), "PNG"),
    "crop 5%": lambda p, data: _encoded(_crop(p, 0.05), "PNG"),
    "crop 10%": lambda p, data: _encoded(_crop(p, 0.10), "PNG"),
    "crop 20%": lambda p, data: _encoded(_crop(p, 0.20), "PNG"),
    "rotate 2deg": lambda p, data: _encoded(p.rotate(2, Image.Resampling.BILINEAR), "PNG"),
    "rotate 5deg": lambda p, data: _encoded(p.rotate(5, Image.Resampling.BILINEAR), "PNG"),
    "brightness +20%": lambda p, data: _encoded(ImageEnhance.Brightness(p).enhance(1.2), "PNG"),
    "contrast +20%": lambda p, data: _encoded(ImageEnhance.Contrast(p).enhance(1.2), "PNG"),
    "gamma 0.8": lambda p, data: _encoded(_gamma(p, 0.8), "PNG"),
    "noise sigma 5": lambda p, data: _encoded(_noise(p, 5), "PNG"),
}


@dataclass
class Image_:
    """One image of the benchmark: its group (the original it comes from), what made it."""

    id: str
    group: str
    transform: str  # "original" for the originals
    hard: str | None  # the hard-negative set it belongs to (a lesion, a patient, a volume)
    payload: dict
    picture: Image.Image


@dataclass
class Scores:
    true: int = 0
    predicted: int = 0
    correct: int = 0
    planted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))


COST: dict[str, list[tuple[float, float]]] = defaultdict(list)  # format -> (fingerprint, picture) s


def _row(image_id: str, data: bytes, kind: str = "") -> tuple[dict, Image.Image]:
    """An image's fingerprints and picture as ingest makes them; for an original, the time of
    each (the fingerprints' cost beside what the embed step pays for the picture)."""
    record = SourceRow(0, image_id, {}, data)
    started = time.perf_counter()
    payload = fingerprint(record, MAX, MAX).payload()
    middle = time.perf_counter()
    picture = to_picture(record, get_settings())
    if kind:
        COST[kind].append((middle - started, time.perf_counter() - middle))
    return payload, picture


def bytes_images(kind: str, out: Path, originals: int) -> list[Image_]:
    """skin (JPEG) or xray (PNG): originals, their transforms, and the rest as negatives."""
    if kind == "skin":
        folder = write_sample_dataset(out / "skin", 3 * originals, 7)
        table = datasets.load_dataset(str(folder), split="train")
        rows = table.cast_column("image", datasets.Image(decode=False))
        items = [(r["image_id"], r["image"]["bytes"], r["lesion_id"]) for r in rows]
    else:
        csv_path = write_xray(out / "xray", 3 * originals, 7)
        lines = csv_path.read_text().splitlines()[1:]
        folder = csv_path.parent / "images_001" / "images"
        items = [(c[0], (folder / c[0]).read_bytes(), c[3]) for c in (x.split(",") for x in lines)]
    images = []
    for n, (key, data, hard) in enumerate(items):
        payload, picture = _row(key, data, kind)
        images.append(Image_(key, key, "original", hard, payload, picture))
        if n >= originals:
            continue
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        transforms = dict(IMAGE_TRANSFORMS)
        if kind == "xray":  # a 16-bit export of the original, then its 8-bit copy
            wide = np.asarray(decoded.convert("L"), dtype=np.uint16) * 257
            transforms["16->8-bit"] = lambda p, d, wide=wide: _encoded(Image.fromarray(wide), "PNG")
        for name, make in transforms.items():
            payload, picture = _row(f"{key}/{name}", make(decoded, data))
            images.append(Image_(f"{key}/{name}", key, name, hard, payload, picture))
    return images


def dicom_images(out: Path, originals: int) -> list[Image_]:
    """CT slices: byte copies, header-only edits (new patient, UIDs), noise on the stored
    values, 16->8-bit; the series' other (adjacent) slices are hard negatives."""
    folder = write_dicom(out / "dicom", 3 + 3 * originals, 13)
    ct = [
        p
        for p in sorted(folder.rglob("*.dcm"))
        if dcmread(p, stop_before_pixels=True).Modality == "CT"
    ]
    planted = out / "dicom" / "planted"
    planted.mkdir()
    made: dict[str, tuple[str, str]] = {}  # file -> (group, transform)
    for path in ct[:originals]:
        group = path.relative_to(folder).as_posix()
        (planted / f"{path.stem}-copy.dcm").write_bytes(path.read_bytes())
        made[f"planted/{path.stem}-copy.dcm"] = (group, "byte copy")
        ds = dcmread(path)
        ds.PatientID, ds.PatientName = "PID-NEW", "NEW^PATIENT"
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, tag, generate_uid())
        ds.save_as(planted / f"{path.stem}-header.dcm")
        made[f"planted/{path.stem}-header.dcm"] = (group, "header-only edit")
        noisy = dcmread(path)
        values = noisy.pixel_array.astype(np.float64)
        values += np.random.default_rng(1).normal(0, 5, values.shape)
        kind = noisy.pixel_array.dtype
        limits = np.iinfo(kind)
        noisy.PixelData = np.clip(values, limits.min, limits.max).astype(kind).tobytes()
        noisy.SOPInstanceUID = generate_uid()
        noisy.save_as(planted / f"{path.stem}-noise.dcm")
        made[f"planted/{path.stem}-noise.dcm"] = (group, "noise sigma 5 (stored values)")
    options = ReadOptions(deidentify=False)
    source = DicomSource(resolve(str(folder), fmt="dicom", options=options))
    images = []
    for record in source.read(list(range(len(source))), MAX):
        if record.refusal:
            continue
        group, transform = made.get(record.key, (record.key, "original"))
        series = str(record.payload.get("series"))
        payload = fingerprint(record, MAX, MAX).payload()
        images.append(Image_(record.key, group, transform, series, payload, record.image))
    return images


def nifti_images(out: Path, originals: int) -> list[Image_]:
    """Slices of BraTS cases: a case copied under another id, a volume with noise added; the
    case's other modalities are hard negatives."""
    folder = write_brain_mri(out / "mri", originals + 2, 17)
    cases = sorted(p for p in folder.iterdir() if p.is_dir())
    for case in cases[:originals]:
        for suffix in ("COPY", "NOISE"):
            target = folder / f"{case.name}{suffix}"
            target.mkdir()
            for file in case.iterdir():
                renamed = target / file.name.replace(case.name, target.name)
                if suffix == "COPY" or "seg" in file.name:
                    renamed.write_bytes(file.read_bytes())
                    continue
                volume = nib.load(file)
                data = np.asarray(volume.dataobj, dtype=np.float32)
                data += np.random.default_rng(2).normal(
                    0, 0.02 * float(data.max() or 1), data.shape
                )
                nib.save(nib.Nifti1Image(data, volume.affine), renamed)
    source = NiftiSource(resolve(str(folder), fmt="nifti", options=ReadOptions()))
    images = []
    for record in source.read(list(range(len(source))), MAX):
        if record.refusal:
            continue
        case, modality = record.payload["case_id"], record.payload["modality"]
        original = case.removesuffix("COPY").removesuffix("NOISE")
        transform = (
            "original"
            if case == original
            else ("volume copy" if case.endswith("COPY") else "noise sigma 2% (voxels)")
        )
        payload = fingerprint(record, MAX, MAX).payload()
        images.append(
            Image_(record.key, f"{original}/{modality}", transform, original, payload, record.image)
        )
    return images


TIER_NAMES = ("bytes", "pixels", "phash", "hashes", "embedding")


def hash_pairs(images: list[Image_]) -> dict[str, set[tuple[int, int]]]:
    """Per hash tier, the pairs it finds: candidates as the index gives them (an equal sha256
    or pixels, a shared band), confirmed by the audit's own `_hash_edge`."""
    index: dict[str, list[int]] = defaultdict(list)
    for n, image in enumerate(images):
        for name in ("fp_sha256", "fp_pixels"):
            if image.payload.get(name):
                index[f"{name}={image.payload[name]}"].append(n)
        for band in image.payload["fp_bands"]:
            index[f"band={band}"].append(n)
    found: dict[str, set[tuple[int, int]]] = {t: set() for t in TIER_NAMES[:4]}
    for n, image in enumerate(images):
        keys = [
            f"{f}={image.payload[f]}" for f in ("fp_sha256", "fp_pixels") if image.payload.get(f)
        ]
        keys += [f"band={b}" for b in image.payload["fp_bands"]]
        for m in {m for key in keys for m in index[key] if m > n}:
            pair = (n, m)
            mine, theirs = image.payload, images[m].payload
            if mine.get("fp_sha256") and mine["fp_sha256"] == theirs.get("fp_sha256"):
                found["bytes"].add(pair)
            if mine["fp_pixels"] == theirs["fp_pixels"]:
                found["pixels"].add(pair)
            point = {"id": str(n), "payload": {**mine, "fp_sha256": None, "fp_pixels": None}}
            hit = {"id": str(m), "payload": theirs, "score": 0.0}
            if _hash_edge(PLAN, point, hit):
                found["phash"].add(pair)
    found["hashes"] = found["bytes"] | found["pixels"] | found["phash"]
    return found


def apart(images: list[Image_], found: dict[str, set]) -> tuple[dict[str, set], int]:
    """As the audit reports them: two slices of one volume that are alike, not the same, are no
    duplicates (adjacent slices, listed apart); returns the pairs left, and how many were set
    apart."""

    def same_volume(pair: tuple[int, int]) -> bool:
        a, b = (images[n].payload.get("fp_volume") for n in pair)
        return a is not None and a == b

    same = found["bytes"] | found["pixels"]  # an instance stored twice is a duplicate
    set_apart = {p for got in found.values() for p in got if same_volume(p) and p not in same}
    return {tier: got - set_apart for tier, got in found.items()}, len(set_apart)


def embedding_pairs(images: list[Image_], model: str, k: int = 5) -> tuple[set, float, str]:
    """Pairs within the k nearest whose cosine reaches the threshold the audit derives."""
    from pipeline.embedder import get_embedder
    from pipeline.model_info import default_pooling

    embedder = get_embedder(model, "cpu", default_pooling(model) or "mean", "exact")
    vectors = np.concatenate(
        [embedder.embed([i.picture.convert("RGB") for i in images[s : s + 16]])
         for s in range(0, len(images), 16)]
    )  # fmt: skip
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    nearest = np.argsort(-cosine, axis=1)[:, :k]
    facts, edges = [], []
    for n, image in enumerate(images):
        nn = [float(cosine[n, m]) for m in nearest[n]]
        facts.append(Facts(id=str(n), key=image.id, split="train", group=image.hard, nn=nn))
        edges += [Edge(a=str(n), b=str(m), tier="embedding", similarity=float(cosine[n, m]),
                       cosine=float(cosine[n, m])) for m in nearest[n]]  # fmt: skip
    limits = thresholds(facts, edges)
    pairs = {tuple(sorted((int(e.a), int(e.b)))) for e in edges if e.similarity >= limits.embedding}
    return pairs, limits.embedding, limits.sources["embedding"]


def score(images: list[Image_], found: dict[str, set]) -> dict:
    planted = {
        (n, m)
        for n in range(len(images))
        for m in range(n + 1, len(images))
        if images[n].group == images[m].group
    }
    hard = {
        (n, m)
        for n in range(len(images))
        for m in range(n + 1, len(images))
        if images[n].group != images[m].group
        and images[n].hard
        and images[n].hard == images[m].hard
    }
    transforms = sorted({i.transform for i in images} - {"original"}, key=list(
        dict.fromkeys([i.transform for i in images])).index)  # fmt: skip
    by_transform = {}
    for name in transforms:
        made = [n for n, i in enumerate(images) if i.transform == name]
        originals = [m for m, j in enumerate(images) if j.transform == "original"]
        pairs = {
            tuple(sorted((n, m))) for n in made for m in originals
            if images[m].group == images[n].group
        }  # fmt: skip
        by_transform[name] = {
            tier: round(len(pairs & got) / len(pairs), 3) if pairs else None
            for tier, got in found.items()
        } | {"pairs": len(pairs)}
    tiers = {}
    for tier, got in found.items():
        correct = len(got & planted)
        tiers[tier] = {
            "predicted": len(got),
            "precision": round(correct / len(got), 3) if got else None,
            "recall": round(correct / len(planted), 3) if planted else None,
            "hard_negative_false_pairs": len(got & hard),
            "other_false_pairs": len(got - planted - hard),
        } | _clusters(images, got)
    return {
        "images": len(images),
        "planted_pairs": len(planted),
        "hard_negative_pairs": len(hard),
        "by_transform": by_transform,
        "by_tier": tiers,
    }


def _clusters(images: list[Image_], pairs: set) -> dict:
    """Per planted cluster (an original and its copies): found whole and alone, and the share
    of found clusters that hold one original's images only."""
    parent = list(range(len(images)))

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in pairs:
        parent[root(a)] = root(b)
    found: dict[int, set[int]] = defaultdict(set)
    for n in range(len(images)):
        found[root(n)].add(n)
    groups: dict[str, set[int]] = defaultdict(set)
    for n, image in enumerate(images):
        groups[image.group].add(n)
    original = {i.group: n for n, i in enumerate(images) if i.transform == "original"}
    copies = [n for n, i in enumerate(images) if i.transform != "original"]
    joined = sum(root(n) == root(original[images[n].group]) for n in copies)
    clusters = [c for c in found.values() if len(c) > 1]
    pure = sum(len({images[n].group for n in c}) == 1 for c in clusters)
    return {
        "copies_in_their_cluster": f"{joined}/{len(copies)}",
        "cluster_purity": f"{pure}/{len(clusters)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: a random ViT-S/16 (not meaningful)")
    parser.add_argument("--originals", type=int, default=8, help="originals per format")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="audit-quality-") as tmp:
        out = Path(tmp)
        model = args.model
        if model is None:
            from pipeline.random_models import build_random_vit

            model = str(build_random_vit(out / "vit-random"))
        makers = {
            "skin (hf JPEG)": lambda: bytes_images("skin", out, args.originals),
            "xray (table PNG)": lambda: bytes_images("xray", out, args.originals),
            "dicom": lambda: dicom_images(out, args.originals),
            "nifti": lambda: nifti_images(out, min(args.originals, 3)),
        }
        for name, make in makers.items():
            images = make()
            found = hash_pairs(images)
            found["embedding"], threshold, source = embedding_pairs(images, model)
            found, adjacent = apart(images, found)
            chosen = {"embedding_threshold": threshold, "embedding_threshold_from": source}
            results[name] = score(images, found) | chosen | {"same_volume_set_apart": adjacent}
        results["fingerprint_ms_per_original"] = {
            kind: {
                "fingerprint": round(1000 * float(np.median([f for f, _ in times])), 2),
                "picture (to_picture)": round(1000 * float(np.median([p for _, p in times])), 2),
            }
            for kind, times in COST.items()
        }
    results["model"] = args.model or "random ViT-S/16 (embedding figures NOT meaningful)"
    print(json.dumps(results, indent=1) if args.json else _table(results))


def _table(results: dict) -> str:
    lines = [f"model: {results['model']}"]
    lines.append(
        f"fingerprint cost, median ms per original: {results['fingerprint_ms_per_original']}"
    )
    for name, r in results.items():
        if name in ("model", "fingerprint_ms_per_original"):
            continue
        lines.append(f"\n## {name}: {r['images']} images, {r['planted_pairs']} planted pairs, "
                     f"{r['hard_negative_pairs']} hard-negative pairs; embedding threshold "
                     f"{r['embedding_threshold']} ({r['embedding_threshold_from']}); "
                     f"{r['same_volume_set_apart']} same-volume pairs set apart")  # fmt: skip
        lines.append("| transformation | pairs | " + " | ".join(TIER_NAMES) + " |")
        lines.append("| --- | ---: |" + " ---: |" * len(TIER_NAMES))
        for transform, row in r["by_transform"].items():
            cells = " | ".join(str(row[t]) for t in TIER_NAMES)
            lines.append(f"| {transform} | {row['pairs']} | {cells} |")
        lines.append(
            "\n| tier | predicted | precision | recall | false: hard negatives | false: others "
            "| copies in their original's cluster | cluster purity |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for tier, t in r["by_tier"].items():
            lines.append(
                f"| {tier} | {t['predicted']} | {t['precision']} | {t['recall']} | "
                f"{t['hard_negative_false_pairs']} | {t['other_false_pairs']} | "
                f"{t['copies_in_their_cluster']} | {t['cluster_purity']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
