"""Offline sample data, one module per seed's layout, written by each format's own library:
`skin` (the Hugging Face skin-lesion dataset), `xray` (ChestX-ray14: PNG folder + CSV),
`brain_mri` (BraTS: NIfTI cases with tumour masks), `dicom` (CT and MR series)."""

from pipeline.samples.skin import sample_metadata, write_sample_dataset

__all__ = ["sample_metadata", "write_sample_dataset"]
