"""The table reader on ChestX-ray14-style data and on hand-made CSV, TSV and Parquet files:
what a user indexes from a table is what the table says, keyed so that re-sorting it moves
nothing, and a bad row fails alone."""

from __future__ import annotations

import csv
import datetime
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.picture import picture_of, to_picture
from pipeline.samples.xray import HEADER, LABEL_COUNTS, NO_FINDING, write_xray
from pipeline.schemas import ReadOptions
from pipeline.settings import Settings
from pipeline.sources import SourceError, detect_format, resolve
from pipeline.sources.table import TableSource, field_name, field_names

LIMIT = 32 * 1024 * 1024
XRAY_FIELDS = {
    "image_index": "keyword",
    "finding_labels": "keyword",
    "follow_up": "integer",
    "patient_id": "keyword",  # an identifier, though numeric
    "patient_age": "integer",
    "patient_gender": "keyword",
    "view_position": "keyword",
    "original_image_width": "integer",
    "original_image_height": "integer",
    "original_image_pixel_spacing_x": "float",
    "original_image_pixel_spacing_y": "float",
}


def open_table(path: Path, **options: str) -> TableSource:
    return TableSource(resolve(str(path), fmt="table", options=ReadOptions(**options)))


def read_all(source: TableSource) -> list:
    return source.read(list(range(len(source))), LIMIT)


def picture(path: Path, shade: int = 0) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), shade).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_xray(tmp_path_factory.mktemp("xray"), n=30, seed=3)


@pytest.fixture(scope="module")
def entries(xray: Path) -> list[dict]:
    """The CSV's rows as the standard library reads them, by header name."""
    with xray.open(newline="") as file:
        return list(csv.DictReader(file))


def test_the_sample_has_chestxray14s_layout(xray: Path, entries: list[dict]) -> None:
    assert xray.name == "Data_Entry_2017.csv"
    assert xray.read_text().splitlines()[0] == HEADER
    labels = [set(e["Finding Labels"].split("|")) for e in entries]
    assert any(len(found) > 1 for found in labels), "several findings per image"
    assert all(NO_FINDING not in found or found == {NO_FINDING} for found in labels)
    assert set().union(*labels) <= set(LABEL_COUNTS) | {NO_FINDING}
    patients = [e["Patient ID"] for e in entries]
    assert max(patients.count(p) for p in patients) > 1, "patients with follow-ups"
    assert {e["Patient Gender"] for e in entries} == {"M", "F"}
    assert {e["View Position"] for e in entries} == {"PA", "AP"}
    assert any(not e["Patient Age"] for e in entries), "an occasional missing age"
    for entry in entries[:3]:
        with Image.open(xray.parent / "images_001" / "images" / entry["Image Index"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (1024, 1024))


def test_the_sample_is_deterministic_by_seed(xray: Path, tmp_path: Path) -> None:
    again = write_xray(tmp_path / "again", n=30, seed=3)
    other = write_xray(tmp_path / "other", n=30, seed=4)
    assert again.read_bytes() == xray.read_bytes()
    assert other.read_bytes() != xray.read_bytes()
    name = xray.read_text().splitlines()[1].split(",")[0]
    folder = Path("images_001") / "images" / name
    assert (again.parent / folder).read_bytes() == (xray.parent / folder).read_bytes()


def test_chestxray14_rows_come_back_as_the_csv_says(xray: Path, entries: list[dict]) -> None:
    source = open_table(xray)
    records = read_all(source)
    assert len(source) == len(records) == len(entries)
    for record, entry in zip(records, entries, strict=True):
        name = entry["Image Index"]
        assert record.key == name
        # Found by name below the CSV's folder, as in the real set's images_00N/images/.
        assert record.image == (xray.parent / "images_001" / "images" / name).read_bytes()
        expected = {
            "image_index": name,
            "finding_labels": entry["Finding Labels"].split("|"),
            "follow_up": int(entry["Follow-up #"]),
            "patient_id": str(int(entry["Patient ID"])),
            "patient_gender": entry["Patient Gender"],
            "view_position": entry["View Position"],
            "original_image_width": int(entry["OriginalImage[Width"]),
            "original_image_height": int(entry["Height]"]),
            "original_image_pixel_spacing_x": float(entry["OriginalImagePixelSpacing[x"]),
            "original_image_pixel_spacing_y": float(entry["y]"]),
            "source": source.reference(record.row, record.key),
        }
        if entry["Patient Age"]:  # "058Y" -> 58; missing stays missing
            expected["patient_age"] = int(entry["Patient Age"].removesuffix("Y"))
        assert record.payload == expected
        assert record.refusal is None


def test_a_points_reference_makes_its_picture_again(xray: Path) -> None:
    settings = Settings()
    record = open_table(xray).read([4], LIMIT)[0]
    made = to_picture(record, settings)
    assert (made.mode, made.size) == ("RGB", (1024, 1024))
    again = picture_of(record.payload["source"], settings)
    assert again.tobytes() == made.tobytes()


def test_schema_types_key_and_label(xray: Path) -> None:
    assert open_table(xray).schema.to_dict() == {
        "fields": XRAY_FIELDS,
        "key_field": "image_index",
        "label_field": "finding_labels",
    }


def test_rows_without_the_headers_trailing_comma_read_the_same(xray: Path) -> None:
    lines = xray.read_text().splitlines()
    trimmed = xray.parent / "trimmed.csv"
    trimmed.write_text("\n".join([lines[0], *(line.removesuffix(",") for line in lines[1:])]))
    assert [r.payload | {"source": None} for r in read_all(open_table(trimmed))] == [
        r.payload | {"source": None} for r in read_all(open_table(xray))
    ]


def test_a_resorted_csv_gives_the_same_keys_for_the_same_images(xray: Path) -> None:
    lines = xray.read_text().splitlines()
    body = lines[1:]
    random.Random(7).shuffle(body)
    shuffled = xray.parent / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0], *body]) + "\n")

    def by_key(path: Path) -> dict[str, tuple]:
        return {
            r.key: (r.image, {k: v for k, v in r.payload.items() if k != "source"})
            for r in read_all(open_table(path))
        }

    original, resorted = by_key(xray), by_key(shuffled)
    assert original == resorted
    assert [r.key for r in read_all(open_table(shuffled))] != list(original)  # order did move


def test_a_path_leaving_the_root_fails_that_row_alone(tmp_path: Path) -> None:
    good = picture(tmp_path / "data" / "good.png")
    picture(tmp_path / "secret.png")
    table = tmp_path / "data" / "table.csv"
    table.write_text("file,label\ngood.png,a\n../secret.png,b\n/etc/hostname.png,c\n")
    records = read_all(open_table(table))
    assert records[0].image == good and records[0].refusal is None
    for record, path in zip(records[1:], ["../secret.png", "/etc/hostname.png"], strict=True):
        assert record.image is None
        assert record.refusal == f"path {path!r} is outside the dataset folder"
        assert record.key == path and record.payload["label"] in {"b", "c"}


def test_a_missing_file_fails_its_row_alone(tmp_path: Path) -> None:
    first, last = picture(tmp_path / "a.png"), picture(tmp_path / "c.png", 255)
    table = tmp_path / "t.csv"
    table.write_text("image,diagnosis\na.png,x\nb.png,y\nc.png,z\n,w\n")
    records = read_all(open_table(table))
    assert [r.image for r in records] == [first, None, last, None]
    assert records[1].refusal == f"image file 'b.png' is neither in {tmp_path} nor below it"
    assert records[3].refusal == "no image path in column 'image'"
    assert records[3].key == "row-3"  # a missing key stands in as its row


def test_a_missing_file_in_a_folder_is_named(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("image\nscans/gone.png\n")
    (record,) = read_all(open_table(table))
    assert record.refusal == (
        f"cannot read image file {tmp_path / 'scans' / 'gone.png'}: No such file or directory"
    )


def test_a_name_found_in_two_folders_is_not_guessed(tmp_path: Path) -> None:
    picture(tmp_path / "images_001" / "images" / "x.png")
    picture(tmp_path / "images_002" / "images" / "x.png")
    table = tmp_path / "t.csv"
    table.write_text("image\nx.png\n")
    (record,) = read_all(open_table(table))
    assert record.image is None and "2 files named 'x.png'" in record.refusal


def test_parquet_with_named_columns_and_typed_values(tmp_path: Path) -> None:
    images = {f"scans/{i}.jpg": picture(tmp_path / "pictures" / "scans" / f"{i}.jpg") for i in "ab"}
    table = pa.table(
        {
            "Study UID": ["s-2", "s-1"],
            "Picture": list(images),
            "Label": pa.array(["benign", "malignant"]).dictionary_encode(),
            "Score": [0.25, None],
            "Visit": [datetime.date(2024, 1, 31), datetime.date(2023, 12, 1)],
            "Seen at": pa.array([datetime.datetime(2024, 2, 1, 8, 30), None], pa.timestamp("ms")),
            "Urgent": [True, False],
            "Tags": [["a", "b"], []],
            "Thumb": pa.array([b"\x00", b"\x01"], pa.binary()),
            "Empty": pa.array([None, None], pa.string()),
        }
    )
    path = tmp_path / "meta" / "studies.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    source = open_table(
        path, image_column="picture", key_column="Study UID", image_root="../pictures"
    )
    assert source.schema.to_dict() == {
        "fields": {
            "study_uid": "keyword",
            "picture": "keyword",
            "label": "keyword",
            "score": "float",
            "visit": "datetime",
            "seen_at": "datetime",
            "urgent": "bool",
            "tags": "keyword",
        },
        "key_field": "study_uid",
        "label_field": "label",
    }
    first, second = read_all(source)
    assert (first.key, second.key) == ("s-2", "s-1")
    assert [first.image, second.image] == list(images.values())
    assert first.payload | {"source": None} == {
        "study_uid": "s-2",
        "picture": "scans/a.jpg",
        "label": "benign",
        "score": 0.25,
        "visit": "2024-01-31",
        "seen_at": "2024-02-01T08:30:00",
        "urgent": True,
        "tags": ["a", "b"],
        "source": None,
    }
    assert set(second.payload) == {"study_uid", "picture", "label", "visit", "urgent", "source"}
    assert second.payload["source"]["options"] == {
        "image_column": "picture",
        "key_column": "Study UID",
        "image_root": "../pictures",
    }


def test_tsv_with_detected_path_column_lists_and_ages(tmp_path: Path) -> None:
    first = picture(tmp_path / "img" / "one.PNG")
    (tmp_path / "img" / "two.dcm").write_bytes(b"DICM")  # bytes as they are: embed decodes
    table = pa.table(
        {
            "Case": ["c1", "c2"],
            "File Name": ["img\\one.PNG", "./img/two.dcm"],
            "Findings": [" Effusion | Mass ", "Nodule"],
            "Age": ["006M", "002Y"],
        }
    )
    path = tmp_path / "cases.tsv"
    pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t"))
    source = open_table(path)
    assert source.schema.to_dict()["fields"] == {
        "case": "keyword",
        "file_name": "keyword",
        "findings": "keyword",
        "age": "float",  # months among them: years as a float
    }
    assert (source.schema.key_field, source.schema.label_field) == ("file_name", "findings")
    one, two = read_all(source)
    assert (one.key, two.key) == ("img/one.PNG", "img/two.dcm")
    assert (one.image, two.image) == (first, b"DICM")
    assert one.payload["findings"] == ["Effusion", "Mass"] and two.payload["findings"] == ["Nodule"]
    assert (one.payload["age"], two.payload["age"]) == (0.5, 2.0)


def test_rows_sharing_a_path_are_keyed_apart(tmp_path: Path) -> None:
    picture(tmp_path / "a.png")
    table = tmp_path / "t.csv"
    table.write_text("image,view\na.png,PA\nb.png,AP\na.png,AP\n")
    source = open_table(table)
    assert [r.key for r in read_all(source)] == ["a.png@row-0", "b.png", "a.png@row-2"]
    assert source.keys.describe("image") == (
        "2 rows share 1 image values (a.png): each keyed by its value and row"
    )


def test_field_names_follow_one_rule() -> None:
    assert field_name("Follow-up #") == "follow_up"
    assert field_name("OriginalImage[Width") == "originalimage_width"
    assert field_name("  Patient   ID ") == "patient_id"
    assert field_name("__x__y__") == "x_y"
    # A pair split inside brackets: both halves named from the bracket's word.
    assert field_names(["OriginalImage[Width", "Height]", "Follow-up #"]) == [
        "original_image_width", "original_image_height", "follow_up"
    ]  # fmt: skip


def test_detection_is_by_file_name(tmp_path: Path, xray: Path) -> None:
    assert TableSource.detect(xray)
    for name in ("a.tsv", "b.PARQUET"):
        (tmp_path / name).write_text("")
        assert TableSource.detect(tmp_path / name)
    (tmp_path / "c.txt").write_text("")
    assert not TableSource.detect(tmp_path / "c.txt")
    assert not TableSource.detect(tmp_path)  # its tables name no image: the hf reader's


def test_a_folder_whose_table_names_its_images_is_a_table(tmp_path: Path) -> None:
    """ChestX-ray14 as downloaded: `Data_Entry_2017.csv` beside `images_00N/images/`; read with
    its findings, ages and patients, not as a bare image folder."""
    table = write_xray(tmp_path / "xray", n=4, seed=1)
    (table.parent / "README.csv").write_text("title,year\nChestX-ray14,2017\n")  # names none
    assert detect_format(str(table.parent)) == "table"
    assert open_table(table.parent).path == table
    shutil.copy(table, table.parent / "copy.csv")
    with pytest.raises(SourceError, match=r"several tables \(Data_Entry_2017.csv, copy.csv\)"):
        detect_format(str(table.parent))


def test_a_folder_holding_one_table_opens_it(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "t.csv").write_text("image\nx.png\n")
    assert open_table(folder).path == folder / "t.csv"


@pytest.mark.parametrize(
    ("files", "dataset", "options", "message"),
    [
        ({"t.csv": "id,label\n1,a\n"}, "t.csv", {}, "has no column of image paths"),
        ({"t.csv": "image,label\n"}, "t.csv", {}, "has no rows"),
        ({"notes.txt": "x"}, ".", {}, "holds no table file"),
        ({"a.csv": "image\nx.png\n", "b.tsv": "image\nx.png\n"}, ".", {}, "several tables"),
        ({"t.csv": "Patient ID,patient_id,f\n1,2,x.png\n"}, "t.csv", {}, "both become field"),
        ({"t.csv": "Source,f\nx,x.png\n"}, "t.csv", {}, "a column named 'source'"),
        ({"t.csv": "f\nx.png\n"}, "t.csv", {"image_column": "path"}, "no image column 'path'"),
        ({"t.csv": "f,k\nx.png,\n"}, "t.csv", {"key_column": "k"}, "'k' has no values"),
        ({"t.csv": "f\nx.png\n"}, "t.csv", {"image_root": "nowhere"}, "is not a folder"),
        ({"t.parquet": "not parquet"}, "t.parquet", {}, "cannot read table"),
        ({"t.csv": "a,b\n1,2,3\n"}, "t.csv", {}, "cannot read table"),
    ],
)
def test_unusable_tables_are_refused_on_one_line(
    tmp_path: Path, files: dict[str, str], dataset: str, options: dict, message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SourceError, match=message) as refused:
        open_table(tmp_path / dataset, **options)
    assert "\n" not in str(refused.value)
