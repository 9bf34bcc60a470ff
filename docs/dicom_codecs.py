"""Which DICOM transfer syntaxes medindex decodes, with the default install and with the
`dicom-codecs` extra: measured, the table of docs/dicom.md.

    .venv/bin/pip install -e '.[dicom-codecs]' && .venv/bin/python docs/dicom_codecs.py

One small 8-bit picture is written per transfer syntax that something here can encode
(pydicom itself: the uncompressed syntaxes, deflate and RLE; Pillow: JPEG baseline;
pylibjpeg-openjpeg, from the extra: JPEG 2000), then each file goes through the reader's own
picture code (`pipeline.sources.dicom.make_picture`) in two fresh processes: one with the
extra's packages hidden (as if not installed), one with them. A file counts as decoded when
its picture matches the original (exactly for lossless syntaxes, within 3 grey levels on
average for lossy ones). Syntaxes nothing here can encode are listed with the decoder plugins
pydicom reports for them, marked "not measured".
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# The dicom-codecs extra's import names: hidden, they read as not installed.
EXTRA_MODULES = ("pylibjpeg", "openjpeg", "libjpeg", "rle")
LOSSY = {JPEGBaseline8Bit, JPEG2000}
# Written here, by pydicom (uncompressed, deflate, RLE), Pillow (JPEG baseline) or
# pylibjpeg-openjpeg (JPEG 2000, from the extra: without it, those files are not written).
WRITTEN = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEG2000,
]
# Nothing here encodes these (no JPEG lossless, JPEG-LS or HTJ2K encoder is installed).
UNWRITTEN = [JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, HTJ2KLossless]
SIZE = 64


def original() -> np.ndarray:
    """A smooth 8-bit picture with edges: lossy codecs keep it within a few grey levels."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    picture = 2 * x + 1.5 * y + 40 * ((x - 32) ** 2 + (y - 32) ** 2 < 200)
    return np.clip(picture, 0, 255).astype(np.uint8)


def dataset() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "OT"
    ds.set_pixel_data(original(), "MONOCHROME2", 8, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 128, 256  # the identity on 8 bits: picture == pixels
    return ds


def write(syntax: UID, path: Path) -> None:
    """One file in `syntax` (none when nothing here encodes it)."""
    ds = dataset()
    if syntax == JPEGBaseline8Bit:  # Pillow's libjpeg encodes, pydicom encapsulates
        jpeg = io.BytesIO()
        Image.fromarray(original()).save(jpeg, format="JPEG", quality=95)
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax.is_compressed:
        try:
            ds.compress(syntax, **({"j2k_cr": [5]} if syntax == JPEG2000 else {}))
        except RuntimeError:  # no encoder plugin installed
            return
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def decode_all(folder: Path, hide_extra: bool) -> dict[str, str]:
    """In a fresh process: each file through the reader's picture code -> "ok" or reason."""
    hide = f"import sys; sys.modules.update(dict.fromkeys({EXTRA_MODULES!r}))\n" * hide_extra
    code = hide + f"import docs.dicom_codecs as m; m.report({str(folder)!r})"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def report(folder: str) -> None:
    """Per syntax: the decoder plugins pydicom finds in this process, and for each written
    file "ok" or why not (printed as JSON for the parent process)."""
    from pipeline.schemas import ReadOptions
    from pipeline.sources.dicom import make_picture

    results = {s: {"plugins": get_decoder(s).available_plugins} for s in WRITTEN + UNWRITTEN}
    for path in sorted(Path(folder).glob("*.dcm")):
        syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        try:
            picture = make_picture(path.read_bytes(), ReadOptions(), 10**8, 2**30)
        except ValueError as exc:
            results[syntax]["result"] = str(exc)
            continue
        error = np.abs(np.asarray(picture, dtype=float) - original()).mean()
        good = error < 3 if syntax in LOSSY else error == 0
        results[syntax]["result"] = "ok" if good else f"wrong picture (mean error {error:.1f})"
    print(json.dumps(results))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, syntax in enumerate(WRITTEN):
            write(syntax, folder / f"{i:02d}.dcm")
        default, extra = decode_all(folder, hide_extra=True), decode_all(folder, False)
    print("| Transfer syntax | Default install | With `dicom-codecs` |")
    print("|---|---|---|")
    for syntax in WRITTEN + UNWRITTEN:
        print(f"| {syntax.name} | {_cell(default[syntax])} | {_cell(extra[syntax])} |")


def _cell(found: dict) -> str:
    plugins = ", ".join(found["plugins"])
    if "result" not in found:
        return f"not measured (no encoder here); plugins: {plugins or 'none'}"
    if found["result"] != "ok":
        return f"fails: {found['result']}"
    return f"decodes ({plugins})" if plugins else "decodes (pydicom)"


if __name__ == "__main__":
    main()
