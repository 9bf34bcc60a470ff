"""Offline DICOM sample data: what a hospital export looks like, written by pydicom.

Two patients: a CT chest series (Hounsfield units through rescale slope/intercept, two window
presets in the file), a CR chest radiograph stored MONOCHROME1 and a structured report without
pixels for the first; an MR brain series (no window tags: read by percentiles) and a
multi-frame MR file for the second. Identifying tags are filled in with values a test can
search for (`IDENTIFYING_VALUES`), and folder names hold patient IDs and accession numbers,
as real exports do. Deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

SIZE = 128  # pixels a side: small and fast, enough to show anatomy
MULTI_FRAMES = 5
FIXED_FILES = 3  # the radiograph, the multi-frame file and the report
INSTITUTION = "MEDINDEX SAMPLE HOSPITAL"
INSTITUTION_ADDRESS = "1 Sampleton Road, Testville"
REFERRER = "REFERRINGDOC^ALICE"
PERFORMER = "PERFORMINGDOC^BORIS"
OPERATOR = "OPERATORNAME^CAROL"
BIRTH_DATE = "19610304"


@dataclass(frozen=True)
class Patient:
    name: str
    id: str
    accession: str
    sex: str
    age: str
    study_uid: str
    study_date: str


def write_dicom(out: Path, n: int, seed: int) -> Path:
    """`n` DICOM files (at least 5) under `out/<patient>/<study>/<series>/IM_NNNN.dcm`."""
    if n < FIXED_FILES + 2:
        raise ValueError(f"n must be at least {FIXED_FILES + 2} (one CT and one MR slice)")
    rng = np.random.default_rng(seed)
    ct_slices = max(1, 2 * (n - FIXED_FILES) // 3)
    chest, head = _patients(seed)
    _write_ct(out, chest, seed, ct_slices, rng)
    _write_cr(out, chest, seed, rng)
    _write_sr(out, chest, seed)
    _write_mr(out, head, seed, n - FIXED_FILES - ct_slices, rng)
    _write_multiframe(out, head, seed, rng)
    return out


def identifying_values(seed: int) -> list[str]:
    """Every identifying value the sample data holds, as a test searches for them."""
    values = [INSTITUTION, INSTITUTION_ADDRESS, BIRTH_DATE, "1961-03-04"]
    for person in (REFERRER, PERFORMER, OPERATOR):
        values += person.split("^")
    for patient in _patients(seed):
        values += [*patient.name.split("^"), patient.id, patient.accession, patient.study_uid]
    return values


def _patients(seed: int) -> tuple[Patient, Patient]:
    return (
        Patient(
            f"CHESTPATIENT{seed}^JANE", f"PID-C{seed:04d}", f"ACC-C{seed:04d}", "F", "061Y",
            _uid(seed, "study", 1), "20240305",
        ),
        Patient(
            f"HEADPATIENT{seed}^JOHN", f"PID-H{seed:04d}", f"ACC-H{seed:04d}", "M", "006M",
            _uid(seed, "study", 2), "20231117",
        ),
    )  # fmt: skip


def _uid(seed: int, *parts: object) -> str:
    """A UID under pydicom's root, the same for the same seed and parts."""
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def _dataset(patient: Patient, seed: int, sop_class: str, series: int, number: int) -> Dataset:
    """The tags every file shares: patient, study, series, instance, equipment."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(
        seed, patient.id, series, number
    )
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = INSTITUTION_ADDRESS
    ds.ReferringPhysicianName = REFERRER
    ds.PerformingPhysicianName = PERFORMER
    ds.OperatorsName = OPERATOR
    ds.StudyInstanceUID = patient.study_uid
    ds.StudyDate = ds.SeriesDate = patient.study_date
    ds.StudyTime = "101500"
    ds.SeriesInstanceUID = _uid(seed, patient.id, series)
    ds.FrameOfReferenceUID = _uid(seed, patient.id, "frame")
    ds.SeriesNumber = series
    ds.InstanceNumber = number
    ds.Manufacturer = "MEDINDEX SYNTHETIC"
    return ds


def _save(ds: Dataset, out: Path, patient: Patient, series: int, number: int) -> None:
    folder = out / f"PAT_{patient.id}" / f"ACC_{patient.accession}" / f"SER_{series:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"IM_{number:04d}.dcm", enforce_file_format=True)


def _slices(ds: Dataset, z: float, spacing: float, thickness: float) -> None:
    ds.ImagePositionPatient = [-SIZE * spacing / 2, -SIZE * spacing / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z  # along the normal of axial slices: z itself
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness


def _write_ct(out: Path, patient: Patient, seed: int, count: int, rng: np.random.Generator) -> None:
    for number in range(1, count + 1):
        ds = _dataset(patient, seed, CTImageStorage, 1, number)
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "CT CHEST W/O CONTRAST"
        _slices(ds, z=-40.0 + 5.0 * number, spacing=2.5, thickness=5.0)
        level = (number - 0.5) / count  # 0 at the lung bases, 1 at the apices
        stored = np.clip(_ct_hu(level, rng) + 1024, 0, 4095).astype(np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]  # mediastinum, then lung
        _save(ds, out, patient, 1, number)


def _write_cr(out: Path, patient: Patient, seed: int, rng: np.random.Generator) -> None:
    ds = _dataset(patient, seed, ComputedRadiographyImageStorage, 2, 1)
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    # Free text that names the patient, as technologists type it: scrubbed when de-identifying.
    ds.SeriesDescription = f"CHEST PA {patient.name.split('^')[0]}"
    ds.PixelSpacing = [0.8, 0.8]
    attenuation = _cr_attenuation(rng)  # bone high, lung low
    # MONOCHROME1: the lowest value is white, so bone (high attenuation) is stored low.
    stored = np.clip(4095 * (1 - attenuation), 0, 4095).astype(np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME1", 12, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    _save(ds, out, patient, 2, 1)


def _write_sr(out: Path, patient: Patient, seed: int) -> None:
    ds = _dataset(patient, seed, BasicTextSRStorage, 3, 1)
    ds.Modality = "SR"
    ds.SeriesDescription = "RADIOLOGY REPORT"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.TextValue = f"No acute findings. Reported for {patient.name}."
    ds.ContentSequence = Sequence([finding])
    _save(ds, out, patient, 3, 1)


def _write_mr(out: Path, patient: Patient, seed: int, count: int, rng: np.random.Generator) -> None:
    for number in range(1, count + 1):
        ds = _dataset(patient, seed, MRImageStorage, 1, number)
        ds.Modality = "MR"
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = "T1 AXIAL"
        _slices(ds, z=10.0 * number, spacing=1.8, thickness=4.0)
        level = (number - 0.5) / count
        ds.set_pixel_data(_mr_brain(level, rng), "MONOCHROME2", 12, generate_instance_uid=False)
        _save(ds, out, patient, 1, number)


def _write_multiframe(out: Path, patient: Patient, seed: int, rng: np.random.Generator) -> None:
    sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds = _dataset(patient, seed, sop_class, 2, 1)
    ds.Modality = "MR"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "T1 AXIAL MULTIFRAME"
    _slices(ds, z=0.0, spacing=1.8, thickness=4.0)
    frames = [_mr_brain((f + 0.5) / MULTI_FRAMES, rng) for f in range(MULTI_FRAMES)]
    ds.set_pixel_data(np.stack(frames), "MONOCHROME2", 12, generate_instance_uid=False)
    _save(ds, out, patient, 2, 1)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in -1..1, y down."""
    axis = np.linspace(-1.0, 1.0, SIZE)
    return np.meshgrid(axis, axis)


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _ct_hu(level: float, rng: np.random.Generator) -> np.ndarray:
    """An axial chest slice in HU: air, body with a fat rim, lungs, heart, spine, ribs."""
    x, y = _grid()
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[_ellipse(x, y, 0, 0.05, 0.9, 0.65)] = -100.0  # subcutaneous fat
    hu[_ellipse(x, y, 0, 0.05, 0.84, 0.59)] = 40.0  # soft tissue
    lung = 0.28 + 0.08 * np.sin(np.pi * level)  # lungs widest mid-chest
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 0.42, 0.0, lung, 0.42)] = -850.0
    hu[_ellipse(x, y, 0.1, 0.12, 0.22 * (1.2 - level), 0.2)] = 50.0  # heart, gone near apex
    hu[_ellipse(x, y, 0, 0.5, 0.12, 0.1)] = 700.0  # vertebral body
    hu[_ellipse(x, y, 0, -0.35, 0.06, 0.05)] = 60.0  # sternum (cartilage and bone)
    ribs = _ellipse(x, y, 0, 0.05, 0.8, 0.55) & ~_ellipse(x, y, 0, 0.05, 0.76, 0.51)
    hu[ribs & (np.sin(8 * np.arctan2(y, x) + 6 * level) > 0.6)] = 900.0
    return hu + rng.normal(0, 12, hu.shape)


def _cr_attenuation(rng: np.random.Generator) -> np.ndarray:
    """A PA chest radiograph's attenuation in 0..1: mediastinum and bone high, lungs low."""
    x, y = _grid()
    body = _ellipse(x, y, 0, 0.1, 0.95, 1.1) * 0.55
    lungs = sum(_ellipse(x, y, s * 0.4, -0.05, 0.3, 0.55) for s in (-1, 1)) * 0.35
    spine = (np.abs(x) < 0.07) * 0.35
    ribs = (np.sin(14 * (y + 0.15 * x**2)) > 0.7) * (np.abs(x) < 0.75) * 0.15
    attenuation = body - lungs + spine + ribs + rng.normal(0, 0.02, x.shape)
    return np.clip(attenuation + 0.1, 0.0, 1.0)


def _mr_brain(level: float, rng: np.random.Generator) -> np.ndarray:
    """A T1 axial brain slice (12-bit): scalp fat bright, skull dark, white matter brighter
    than grey, ventricles dark; the brain shrinks towards the vertex."""
    x, y = _grid()
    scale = 0.75 + 0.2 * np.sin(np.pi * min(level + 0.3, 1.0))
    image = np.zeros((SIZE, SIZE))
    image[_ellipse(x, y, 0, 0, 0.8 * scale, 0.95 * scale)] = 1400.0  # scalp fat
    image[_ellipse(x, y, 0, 0, 0.74 * scale, 0.89 * scale)] = 150.0  # skull
    brain = _ellipse(x, y, 0, 0, 0.68 * scale, 0.83 * scale)
    image[brain] = 700.0  # grey matter
    gyri = np.sin(9 * x + 2 * np.sin(7 * y)) * np.cos(8 * y + 2 * np.sin(6 * x)) > -0.2
    image[brain & _ellipse(x, y, 0, 0, 0.55 * scale, 0.7 * scale) & gyri] = 950.0  # white matter
    for side in (-1, 1):  # lateral ventricles
        image[_ellipse(x, y, side * 0.12, -0.05, 0.07, 0.3 * (1 - level))] = 250.0
    return np.clip(image + rng.normal(0, 25, image.shape), 0, 4095).astype(np.uint16)
