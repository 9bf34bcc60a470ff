"""The DICOM reader on files written by pydicom: the picture (modality LUT, VOI window, CT
presets, MONOCHROME1, middle frame, middle instance), bad files failing alone, and
de-identification (no identifying value in any payload, key or reason; keyed hashes)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import resource
import shutil
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pipeline.images import ImageError
from pipeline.samples.dicom import identifying_values, write_dicom
from pipeline.schemas import ReadOptions
from pipeline.settings import get_settings
from pipeline.sources import SourceError, resolve
from pipeline.sources.dicom import DicomSource, age_in_years, query_picture, sniff

MAX_BYTES = 32 * 1024 * 1024
UID = re.compile(r"\d+(?:\.\d+){3,}")
SEED = 7
# What the sample files hold besides names, dates and UIDs that identifies.
IDENTIFIERS = ("PatientID", "AccessionNumber", "InstitutionName", "InstitutionAddress")
PRESETS = {"lung": (-600, 1500), "soft_tissue": (40, 400), "bone": (400, 1800), "brain": (40, 80)}


@pytest.fixture(autouse=True)
def deid_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    set_key(monkeypatch, "test-secret-key")
    yield
    get_settings.cache_clear()  # the next test reads the environment monkeypatch restores


def set_key(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    """The de-identification key, as a worker started with it reads it."""
    if key is None:
        monkeypatch.delenv("MEDINDEX_DEID_KEY")
    else:
        monkeypatch.setenv("MEDINDEX_DEID_KEY", key)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dicom(tmp_path_factory.mktemp("dicom"), 12, SEED)


def open_source(folder: Path, **options: object) -> DicomSource:
    return DicomSource(resolve(str(folder), fmt="dicom", options=ReadOptions(**options)))


def write_file(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """One DICOM file, as a scanner's export writes it (pydicom's own writer)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = tags.pop("sop", CTImageStorage)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.set_pixel_data(pixels, photometric, 8 * pixels.itemsize, generate_instance_uid=False)
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def linear_window(value: float, center: float, width: float) -> int:
    """PS3.3 C.11.2.1.2.1 (the LINEAR VOI function) onto 0..255, one value at a time."""
    if value <= center - 0.5 - (width - 1) / 2:
        return 0
    if value > center - 0.5 + (width - 1) / 2:
        return 255
    return round(((value - (center - 0.5)) / (width - 1) + 0.5) * 255)


def picture_of(folder: Path, row: int = 0, **options: object) -> np.ndarray:
    (record,) = open_source(folder, **options).read([row], MAX_BYTES)
    assert record.refusal is None, record.refusal
    return np.asarray(record.image)


def test_a_ramp_comes_out_of_rescale_window_and_monochrome1(tmp_path: Path) -> None:
    stored = np.arange(0, 600, dtype=np.uint16).reshape(20, 30)
    tags = dict(
        RescaleSlope=2, RescaleIntercept=-300, WindowCenter=[100, 900], WindowWidth=[400, 1]
    )
    write_file(tmp_path / "inverted" / "a.dcm", stored, "MONOCHROME1", Modality="CT", **tags)
    write_file(tmp_path / "plain" / "a.dcm", stored, "MONOCHROME2", Modality="CT", **tags)
    # Rescale to 2 * s - 300, then the first window (100, 400), then white for low values.
    expected = [255 - linear_window(2 * s - 300, 100, 400) for s in stored.ravel().tolist()]
    inverted = picture_of(tmp_path / "inverted")
    assert inverted.dtype == np.uint8 and inverted.shape == (20, 30)
    assert inverted.ravel().tolist() == expected
    assert (picture_of(tmp_path / "plain") == 255 - inverted).all()
    assert len(set(expected)) > 2  # the ramp crosses the window: not only black and white


@pytest.mark.parametrize("preset", PRESETS)
def test_ct_presets_window_hounsfield_units(tmp_path: Path, preset: str) -> None:
    hu = np.linspace(-1200, 2000, 64 * 64).reshape(64, 64)
    stored = (hu + 1024).astype(np.uint16)
    tags = dict(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    write_file(tmp_path / "ct" / "a.dcm", stored, Modality="CT", **tags)
    write_file(tmp_path / "mr" / "a.dcm", stored, Modality="MR", sop=MRImageStorage, **tags)
    center, width = PRESETS[preset]
    expected = [linear_window(s - 1024, center, width) for s in stored.ravel().tolist()]
    assert picture_of(tmp_path / "ct", dicom_window=preset).ravel().tolist() == expected
    # A preset is a CT window (Hounsfield units): an MR keeps its own.
    own = [linear_window(s - 1024, 40, 400) for s in stored.ravel().tolist()]
    assert picture_of(tmp_path / "mr", dicom_window=preset).ravel().tolist() == own


def test_without_window_tags_one_hot_pixel_does_not_darken_the_picture(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (100, 1))
    stored[0, 0] = 60000  # metal: a raw min-max window would make everything else black
    write_file(tmp_path / "mr" / "a.dcm", stored, Modality="MR", sop=MRImageStorage)
    picture = picture_of(tmp_path / "mr")
    ramp = picture[1]
    assert ramp[0] == 0 and ramp[-1] == 255
    assert 110 <= ramp[50] <= 145  # mid-ramp is mid-grey
    assert (np.diff(ramp.astype(int)) >= 0).all()


def test_a_voi_lut_table_in_the_file_is_applied(tmp_path: Path) -> None:
    stored = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    table = Dataset()
    table.LUTDescriptor = [256, 0, 16]  # 256 entries from value 0, 16-bit output
    reversed_ramp = 257 * (255 - np.arange(256, dtype="<u2"))  # over 0..65535
    table.add_new("LUTData", "OW", reversed_ramp.tobytes())
    write_file(tmp_path / "dx" / "a.dcm", stored, Modality="DX", VOILUTSequence=[table])
    assert (picture_of(tmp_path / "dx") == 255 - stored).all()


def test_a_multi_frame_file_gives_its_middle_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((16, 16), 100 * (f + 1), dtype=np.uint16) for f in range(5)])
    frames[2, :8] = 0  # the middle frame alone has a dark half
    write_file(
        tmp_path / "mf" / "a.dcm",
        frames,
        Modality="MR",
        sop=SecondaryCaptureImageStorage,
        WindowCenter=250,
        WindowWidth=500,
    )
    picture = picture_of(tmp_path / "mf")
    assert (picture[:8] == linear_window(0, 250, 500)).all()
    assert (picture[8:] == linear_window(300, 250, 500)).all()


def test_colour_stays_colour(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    write_file(tmp_path / "us" / "a.dcm", rgb, "RGB", Modality="US")
    (record,) = open_source(tmp_path / "us").read([0], MAX_BYTES)
    assert record.image.mode == "RGB"
    assert (np.asarray(record.image) == rgb).all()


def test_series_mode_takes_the_middle_instance(tmp_path: Path) -> None:
    window = dict(Modality="MR", WindowCenter=100, WindowWidth=200)
    series = generate_uid()
    # File names in another order than the instance numbers: the order is the scanner's.
    for name, number in zip("edcab", [1, 2, 3, 4, 5], strict=True):
        pixels = np.full((8, 8), number * 10, dtype=np.uint16)
        tags = dict(SeriesInstanceUID=series, InstanceNumber=number, **window)
        write_file(tmp_path / "s1" / f"{name}.dcm", pixels, sop=MRImageStorage, **tags)
    # No instance numbers: the position along the slice normal orders them.
    other = generate_uid()
    for name, z in zip("abc", [30, -10, 10], strict=True):
        tags = dict(SeriesInstanceUID=other, ImagePositionPatient=[0, 0, z], **window)
        tags["ImageOrientationPatient"] = [1, 0, 0, 0, 1, 0]
        pixels = np.full((8, 8), z + 100, dtype=np.uint16)
        write_file(tmp_path / "s2" / f"{name}.dcm", pixels, sop=MRImageStorage, **tags)
    source = open_source(tmp_path, dicom_unit="series")
    assert len(source) == 2 and len(open_source(tmp_path)) == 8
    first, second = source.read([0, 1], MAX_BYTES)
    assert (np.asarray(first.image) == linear_window(30, 100, 200)).all()  # instance 3 of 5
    assert (np.asarray(second.image) == linear_window(110, 100, 200)).all()  # z 10 of -10..30
    # A series' point is the series: its key stays when instances come and go.
    assert first.key == first.payload["series"] and second.key == second.payload["series"]


def test_a_report_without_pixels_and_a_truncated_file_fail_alone(
    sample: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    files = sorted(sample.rglob("*.dcm"))
    for path in files:
        target = folder / path.relative_to(sample)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    truncated = folder / files[1].relative_to(sample)
    truncated.write_bytes(truncated.read_bytes()[:-5000])
    source = open_source(folder, deidentify=False)
    records = {r.key: r for r in source.read(list(range(len(source))), MAX_BYTES)}
    report = records[str(next(p for p in files if _modality(p) == "SR").relative_to(sample))]
    assert report.refusal == "no pixel data (a Basic Text SR Storage without an image)"
    broken = records[str(truncated.relative_to(folder))]
    assert broken.refusal and "pixel data" in broken.refusal
    assert broken.payload["modality"] == "CT"  # its payload is still known for the report
    pictures = [r for r in records.values() if r.refusal is None]
    assert len(pictures) == len(files) - 2
    assert all(r.image.mode == "L" and r.image.size == (128, 128) for r in pictures)


def _modality(path: Path) -> str:
    return dcmread(path, stop_before_pixels=True).Modality


@pytest.fixture
def no_jpeg2000_decoder() -> Iterator[None]:
    """pydicom without any JPEG 2000 decoder, as on an install without the dicom-codecs
    extra and with a Pillow built without OpenJPEG."""
    decoder = get_decoder(JPEG2000Lossless)
    plugins = ("gdcm", "pylibjpeg", "pillow")  # pydicom's own order of preference
    for label in plugins:
        decoder.remove_plugin(label)
    yield
    decoder.add_plugins([(p, (f"pydicom.pixels.decoders.{p}", "_decode_frame")) for p in plugins])


def write_jpeg2000(path: Path, pixels: np.ndarray) -> Path:
    """A JPEG 2000 lossless file: OpenJPEG (through Pillow) encodes, pydicom encapsulates."""
    codestream = io.BytesIO()
    Image.fromarray(pixels).save(codestream, format="JPEG2000", no_jp2=True, irreversible=False)
    write_file(path, pixels, Modality="OT", sop=SecondaryCaptureImageStorage)
    ds = dcmread(path)
    ds.PixelData = encapsulate([codestream.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.WindowCenter, ds.WindowWidth = 128, 256  # the identity on 8 bits
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_compressed_file_without_a_decoder_fails_alone_naming_its_syntax(
    tmp_path: Path, no_jpeg2000_decoder: None
) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    write_jpeg2000(tmp_path / "a.dcm", pixels)
    write_file(tmp_path / "b.dcm", pixels, Modality="OT", WindowCenter=128, WindowWidth=256)
    compressed, plain = open_source(tmp_path, deidentify=False).read([0, 1], MAX_BYTES)
    assert compressed.refusal == (
        "transfer syntax JPEG 2000 Image Compression (Lossless Only): no decoder installed "
        "(install the dicom-codecs extra: pip install 'medindex[dicom-codecs]')"
    )
    assert plain.refusal is None and (np.asarray(plain.image) == pixels).all()


def test_a_compressed_file_decodes_where_a_decoder_is_installed(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    write_jpeg2000(tmp_path / "a.dcm", pixels)
    assert get_decoder(JPEG2000Lossless).is_available
    assert (picture_of(tmp_path, deidentify=False) == pixels).all()  # lossless


def recognisable_values(folder: Path) -> set[str]:
    """Every identifying value the files hold, read back from the files themselves (names,
    dates, UIDs, IDs, addresses), with the sample's own list."""
    values = set(identifying_values(SEED))
    for path in folder.rglob("*.dcm"):
        for element in dcmread(path).iterall():
            if element.VR in ("PN", "DA", "UI") or element.keyword in IDENTIFIERS:
                values.add(str(element.value))
    values.discard("")
    return {v for v in values if not v.startswith("1.2.840.10008.")}  # DICOM's own classes


def test_no_identifying_value_appears_in_payloads_keys_reasons_or_logs(
    sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    folder = tmp_path / "copy"
    for path in sample.rglob("*.dcm"):
        target = folder / path.relative_to(sample)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    values = recognisable_values(folder)
    assert len(values) > 20
    (folder / "notes.txt").write_text("not DICOM")
    # Cut inside a UID: pydicom warns and logs, quoting what is left of it.
    whole = next(folder.rglob("IM_0002.dcm"))
    data = whole.read_bytes()
    uid = dcmread(whole).SeriesInstanceUID
    cut = data.index(uid.encode()) + uid.index(".", 20) + 1  # ends in a dot: invalid
    (whole.parent / "IM_0099.dcm").write_bytes(data[:cut])
    caplog.set_level(logging.DEBUG)
    written = []
    for unit in ("instance", "series"):
        source = open_source(folder, dicom_unit=unit)
        gone = folder / source.instances[0].path
        data = gone.read_bytes()
        gone.unlink()  # a file lost after listing: its reason must not name its path
        records = source.read(list(range(len(source))), MAX_BYTES)
        gone.write_bytes(data)
        reason = f"cannot read image file {records[0].key}: No such file or directory"
        assert records[0].refusal == reason  # named by its key, never its path
        written += [json.dumps(r.payload) + r.key + (r.refusal or "") for r in records]
        written.append(json.dumps(source.keys.duplicated) + source.keys.fingerprint)
    # Log lines, and warnings (a worker prints them to its log).
    written += [record.getMessage() for record in caplog.records]
    written += [str(warning.message) for warning in recwarn]
    text = "\n".join(written).lower()
    leaked = sorted(v for v in values if v.lower() in text)
    assert not leaked
    assert not UID.findall(text)  # not even a UID cut short
    assert "chest pa [removed]" in text  # the patient's name typed in a description


def test_keyed_hashes_are_stable_and_change_with_the_key(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def identities() -> list[tuple]:
        records = open_source(sample).read(list(range(12)), MAX_BYTES)
        return [
            (r.key, r.payload["patient"], r.payload["study"], r.payload["series"]) for r in records
        ]

    first = identities()
    assert first == identities()  # another open (another worker) gives the same hashes
    assert len({patient for _, patient, _, _ in first}) == 2  # grouping per patient still works
    set_key(monkeypatch, "another-key")
    other = identities()
    assert all(not set(a) & set(b) for a, b in zip(first, other, strict=True))


def test_without_de_identification_identities_are_clear(sample: Path) -> None:
    source = open_source(sample, deidentify=False)
    record = source.read([0], MAX_BYTES)[0]
    ds = dcmread(sample / record.key)
    assert record.payload["patient"] == ds.PatientID
    assert record.payload["study"] == ds.StudyInstanceUID
    assert record.payload["series"] == ds.SeriesInstanceUID
    assert record.payload["source"]["options"] == {"deidentify": False}


def test_de_identifying_without_a_key_is_refused(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_key(monkeypatch, None)
    with pytest.raises(SourceError, match="MEDINDEX_DEID_KEY"):
        open_source(sample)
    assert len(open_source(sample, deidentify=False)) == 12


def test_payload_schema_and_detection(sample: Path, tmp_path: Path) -> None:
    source = open_source(sample)
    payloads = [r.payload for r in source.read(list(range(len(source))), MAX_BYTES)]
    ct = next(p for p in payloads if p["modality"] == "CT")
    assert ct["study_date"] == "2024-03-05" and ct["patient_age"] == 61.0
    assert ct["pixel_spacing"] == [2.5, 2.5] and ct["slice_thickness"] == 5.0
    assert ct["rows"] == ct["columns"] == 128 and ct["body_part_examined"] == "CHEST"
    assert next(p for p in payloads if p["modality"] == "MR")["patient_age"] == 0.5  # 006M
    assert {p["modality"] for p in payloads} == {"CT", "CR", "SR", "MR"}
    schema = source.schema.to_dict()
    assert schema["label_field"] == "modality" and schema["key_field"] is None
    assert schema["fields"]["study_date"] == "datetime"
    assert schema["fields"]["rows"] == "integer" and schema["fields"]["patient"] == "keyword"
    fields = set(schema["fields"]) | {"source"}
    assert all(set(p) <= fields for p in payloads)
    assert DicomSource.detect(sample)
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    assert not DicomSource.detect(tmp_path) and not DicomSource.detect(tmp_path / "a.png")


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", 45.0), ("006M", 0.5), ("026W", 0.498), ("003D", 0.008), ("", None), ("45", None)],
)
def test_patient_age_in_years(value: str, years: float | None) -> None:
    assert age_in_years(value) == years


def test_a_folder_without_dicom_is_refused_and_other_files_fail_with_their_reason(
    sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(SourceError, match="no readable DICOM file"):
        open_source(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(
        (sample / open_source(sample).instances[0].path).read_bytes()
    )
    source = open_source(tmp_path, deidentify=False)
    image, fake, readme = source.read([0, 1, 2], MAX_BYTES)
    assert (image.key, fake.key, readme.key) == ("a/x.dcm", "fake.dcm", "readme.txt")
    assert image.refusal is None
    reason = "not a DICOM file (no File Meta header, and no dataset at its start)"
    assert fake.refusal == readme.refusal == reason
    assert "3 files looked at: 3 rows (2 no DICOM image: failed with the reason)" in caplog.text


def test_an_uploaded_file_gives_the_ingest_picture(sample: Path) -> None:
    source = open_source(sample)
    path = sample / source.instances[0].path
    (record,) = source.read([0], MAX_BYTES)
    data = path.read_bytes()
    assert sniff(data) and not sniff(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert (np.asarray(query_picture(data, ReadOptions())) == np.asarray(record.image)).all()
    with pytest.raises(ImageError, match="not a DICOM file"):
        query_picture(b"\x89PNG\r\n\x1a\n" + bytes(200), ReadOptions())
    report = next(p for p in sample.rglob("*.dcm") if _modality(p) == "SR")
    with pytest.raises(ImageError, match="no pixel data"):
        query_picture(report.read_bytes(), ReadOptions())


# Issue 21, item 12: every text field kept, with identifying values planted in it.
PLANTED = {  # identifying attributes of the file -> their values
    "PatientName": "DOE^JANE",
    "PatientID": "MRN0042",
    "PatientBirthDate": "19600201",
    "OtherPatientNames": "ROE^JANET",
    "OtherPatientIDs": "OTHER-77",
    "PatientAddress": "12 Elm Street, Springfield",
    "PatientTelephoneNumbers": "555-0199",
    "RequestingPhysician": "HOUSE^GREGORY",
    "PhysiciansOfRecord": "CUDDY^LISA",
    "AccessionNumber": "ACC123",
    "InstitutionName": "PRINCETON PLAINSBORO",
}
# What a technologist may type into a kept field: every value above, some in another form.
TYPED = (
    "JANE DOE",
    "ROE",
    "Janet",
    "House",
    "Gregory",
    "CUDDY",
    "WILSON",  # a name held only inside a sequence of the file
    "Springfield",
    "12 Elm Street",
    "555-0199",
    "MRN0042",
    "OTHER-77",
    "ACC123",
    "Princeton Plainsboro",
    "DOB 02/01/1960",
    "seen 1 Feb 1960",
    "1960-02-01",
    "chart 00123456",
)
KEPT_TEXT = {  # payload field -> (tag, its value before anything is planted)
    "modality": ("Modality", "CT"),
    "body_part_examined": ("BodyPartExamined", "CHEST"),
    "series_description": ("SeriesDescription", "CT CHEST W/O CONTRAST"),
    "manufacturer": ("Manufacturer", "ACME MEDICAL"),
    "patient_sex": ("PatientSex", "F"),
}


def write_planted(path: Path, field: str | None, typed: str = "") -> None:
    """A CT file holding identifying values; in `field` (None: none) `typed` after its value."""
    tags = {tag: value for tag, value in KEPT_TEXT.values()} | PLANTED
    if field is not None:
        tag, value = KEPT_TEXT[field]
        tags[tag] = f"{value} {typed}"
    physician = Dataset()
    physician.PersonName = "WILSON^JAMES"
    tags["PhysiciansOfRecordIdentificationSequence"] = [physician]
    with warnings.catch_warnings():  # pydicom warns of the invalid codes: the export has them
        warnings.simplefilter("ignore")
        write_file(path, np.zeros((8, 8), dtype=np.uint16), **tags)


def test_identifying_values_typed_into_every_kept_text_field_are_cleaned(tmp_path: Path) -> None:
    """DICOM PS3.15's Basic Profile on every text attribute the payload keeps: a description
    is cleaned (its Clean Descriptors Option), a coded value that holds an identifier is no
    code and is left out, whatever identifying attribute (or sequence) the file holds it in."""
    write_planted(tmp_path / "control.dcm", None)
    for field in KEPT_TEXT:
        for number, typed in enumerate(TYPED):
            write_planted(tmp_path / field / f"{number:02d}.dcm", field, typed)
    source = open_source(tmp_path)
    records = source.read(list(range(len(source))), MAX_BYTES)
    assert len(records) == 1 + len(KEPT_TEXT) * len(TYPED)
    control = next(r for r in records if source.instances[r.row].path == "control.dcm")
    kept = {field: value for field, (_, value) in KEPT_TEXT.items()}
    assert {field: control.payload.get(field) for field in kept} == kept
    text = json.dumps([[r.payload.get(field) for field in KEPT_TEXT] for r in records]).lower()
    words = {v.lower() for v in PLANTED.values()} | {"jane", "doe", "house", "gregory", "wilson"}
    words |= {"springfield", "elm street", "555-0199", "02/01/1960", "1 feb 1960", "1960-02-01"}
    assert not sorted(word for word in words if word in text)
    assert not re.search(r"\d{6,}", text.replace("[removed]", ""))
    descriptions = {r.payload.get("series_description") for r in records}
    assert "CT CHEST W/O CONTRAST DOB [removed]" in descriptions
    assert "CT CHEST W/O CONTRAST [removed] [removed]" in descriptions  # JANE DOE
    # A coded value with an identifier in it is no code: left out, never half removed.
    for record in records[1:]:
        field = source.instances[record.row].path.split("/")[0]
        if field in ("modality", "body_part_examined", "patient_sex"):
            assert field not in record.payload, record.payload
    # Without de-identification the file's text is kept as it is.
    (clear,) = open_source(tmp_path / "series_description", deidentify=False).read([0], MAX_BYTES)
    assert clear.payload["series_description"] == "CT CHEST W/O CONTRAST JANE DOE"


# Issue 21, item 13: a file that cannot be read is named by its key, never by its path.
@contextmanager
def out_of_file_descriptors() -> Iterator[None]:
    """This process at its limit of open files, as a busy worker can be: the next open fails
    with EMFILE, a real error of the system (a passing one: worth another try)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    held = []
    try:
        with suppress(OSError):  # fill the lower numbers still free
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def assert_names_no_path(exc: BaseException, folder: Path) -> None:
    """What the embed task records (the first line) and logs (the traceback) hold no path."""
    logged = "".join(traceback.format_exception(exc))
    assert str(folder) not in logged and "PAT_" not in logged and "ACC_" not in logged, logged


def test_an_io_error_is_raised_naming_the_file_by_its_key(sample: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(sample, folder)  # its paths hold patient IDs and accession numbers
    source = open_source(folder)
    key = source.read([0], MAX_BYTES)[0].key
    with out_of_file_descriptors(), pytest.raises(OSError) as reading:
        source.read([0], MAX_BYTES)
    assert reading.value.errno == errno.EMFILE  # raised: the task tries the job again
    assert str(reading.value) == f"[Errno 24] Too many open files: '{key}'"
    assert_names_no_path(reading.value, folder)
    with out_of_file_descriptors(), pytest.raises(OSError) as listing:
        open_source(folder)  # a worker opening the dataset
    assert listing.value.errno == errno.EMFILE
    assert_names_no_path(listing.value, folder)
    # A file that became a loop of links since the listing fails alone, named by its key.
    path = folder / source.instances[0].path
    path.unlink()
    path.symlink_to(path.name)
    (record,) = source.read([0], MAX_BYTES)
    assert record.refusal == f"path {key} is a loop of symbolic links"


# Issue 21, item 17: files without the File Meta header, and every other file, are accounted.
PYDICOM_FILES = Path(get_testdata_file("CT_small.dcm")).parent


@contextmanager
def logged_at_the_root() -> Iterator[list[logging.LogRecord]]:
    """The records that reach the root logger's handlers (pytest's own capture also listens
    on loggers that do not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)


def test_each_of_pydicoms_own_files_is_a_row_but_the_dicomdirs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom's test files (every one it ships: images, reports, RT objects, a folder of
    DICOMDIRs, READMEs and JSON): four have no File Meta header and were dropped without a
    word. Every file but a DICOMDIR is now a row, its picture or its reason: indexed + failed
    = files looked at, and the listing says what it set aside."""
    export = tmp_path / "export"
    shutil.copytree(PYDICOM_FILES, export)
    files = [p for p in export.rglob("*") if p.is_file()]
    directories = [p for p in files if p.name.startswith("DICOMDIR")]
    assert len(files) > 150 and len(directories) == 8
    with logged_at_the_root() as logged:  # where a worker's handlers are
        source = open_source(export, deidentify=False)
        records = {r.key: r for r in source.read(list(range(len(source))), MAX_BYTES)}
    assert len(source) == len(files) - len(directories)
    assert all((r.image is None) == bool(r.refusal) for r in records.values())
    assert records["ExplVR_LitEndNoMeta.dcm"].refusal == records["ExplVR_BigEndNoMeta.dcm"].refusal
    assert records["ExplVR_BigEndNoMeta.dcm"].refusal == (
        "no pixel data (a RT Ion Plan Storage without an image); no File Meta header"
    )
    assert records["rtstruct.dcm"].refusal == (
        "no pixel data (a RT Structure Set Storage without an image); no File Meta header"
    )
    assert records["no_meta.dcm"].refusal == (  # its dataset starts a byte late
        "not a DICOM file (no File Meta header, and no dataset at its start)"
    )
    assert sum(r.refusal is None for r in records.values()) > 60
    assert not [r for r in logged if r.name.startswith("pydicom")]  # its decoders' neither
    assert (
        f"{len(files)} files looked at: {len(source)} rows (13 no DICOM image: failed with the "
        f"reason), {len(directories)} DICOMDIR set aside"
    ) in caplog.text


def test_a_file_without_the_file_meta_header_is_read_when_it_holds_an_image(
    tmp_path: Path,
) -> None:
    """Older exports write the dataset alone: read by force, in the transfer syntax its
    encoding shows, it gives the picture the same file with its header gives, at ingest and
    uploaded."""
    original = Path(get_testdata_file("CT_small.dcm"))
    (tmp_path / "with_meta").mkdir()
    shutil.copy(original, tmp_path / "with_meta" / "ct.dcm")
    expected = picture_of(tmp_path / "with_meta")
    for implicit in (True, False):
        ds = dcmread(original)
        ds.file_meta, ds.preamble = FileMetaDataset(), None
        path = tmp_path / "legacy" / f"{'implicit' if implicit else 'explicit'}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        data = path.read_bytes()
        assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00" and sniff(data)
        assert np.array_equal(np.asarray(query_picture(data, ReadOptions())), expected)
    source = open_source(tmp_path / "legacy")
    assert len(source) == 2
    for record in source.read([0, 1], MAX_BYTES):
        assert record.refusal is None and np.array_equal(np.asarray(record.image), expected)
        assert record.payload["modality"] == "CT" and record.payload["rows"] == 128
