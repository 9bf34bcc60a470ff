"""Decompression bombs in the medical formats, as an upload or an export can hold them: a few
hundred KiB that declare or inflate to hundreds of MiB. Written a megabyte at a time (the bomb
is never in memory inflated), for the readers' tests and measurements."""

from __future__ import annotations

import io
import zlib

import nibabel as nib
import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

GZIP_WBITS = 16 + zlib.MAX_WBITS
DEFLATE_WBITS = -zlib.MAX_WBITS  # raw deflate, as DICOM's Deflated transfer syntax has it


def dicom_deflate_bomb(inflated: int) -> bytes:
    """A DICOM file in the Deflated Explicit VR Little Endian transfer syntax whose dataset (a
    CT header without pixels) inflates to `inflated` bytes, the rest zeros: empty elements,
    what pydicom parses slowest. 512 MiB deflate to about 510 KiB."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = _encoder()
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, meta)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    body = _encoder()
    write_dataset(body, ds)
    dataset = body.getvalue()
    return head.getvalue() + _padded(dataset, inflated - len(dataset), DEFLATE_WBITS)


def nifti_volume_bomb(shape: tuple[int, int, int], axial_axis: int = 2) -> bytes:
    """A gzipped NIfTI-1 file declaring a volume of zero voxels (uint8) whose voxel axis
    `axial_axis` runs inferior-superior: 512x1024x1024 voxels (512 MiB) gzip to about 510 KiB."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    world = [0, 1, 2]  # the world axis each voxel axis runs along
    world[axial_axis], world[2] = 2, axial_axis
    affine = np.eye(4)[:, [*world, 3]]
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    head = io.BytesIO()
    header.write_to(head)
    head.write(bytes(int(header["vox_offset"]) - head.tell()))
    return _padded(head.getvalue(), int(np.prod(shape)), GZIP_WBITS)


def _encoder() -> DicomBytesIO:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    return out


def _padded(head: bytes, zeros: int, wbits: int) -> bytes:
    """`head`, then `zeros` zero bytes, compressed (`wbits`: gzip or raw deflate)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(head)]
    parts += [compressor.compress(chunk[: zeros - done]) for done in range(0, zeros, len(chunk))]
    return b"".join(parts) + compressor.flush()
