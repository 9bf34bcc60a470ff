"""De-identification of DICOM: identities become keyed hashes, identifying text never leaves.

The reader builds payloads from an allow-list of tags (pipeline/sources/dicom.py), so names,
IDs, dates of birth and UIDs never reach a payload. What is left to this module: the patient,
study and series identities and file keys, kept as HMAC-SHA256 hashes with a secret key (the
same on every worker, so grouping and filtering per patient still work, and unguessable
without the key: a hash of a bare patient ID could be reversed by trying every ID), and free
text (descriptions, failure reasons) scrubbed of the file's own identifying values.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Tags whose values identify a person, a visit or a place (DICOM PS3.15 Basic Profile's core).
IDENTIFYING_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "StationName",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
# Any UID (dotted digits): study, series and instance UIDs are identifying wherever they appear.
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
REMOVED = "[removed]"
HASH_HEX = 20  # 80 bits: no collision among any archive's patients, short in a payload


class Deidentifier:
    """Identities in clear (`key` None: de-identification off) or as keyed hashes."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @property
    def active(self) -> bool:
        return self._key is not None

    def identity(self, kind: str, value: str) -> str:
        """A patient, study, series or path identity as stored: the value itself, or its keyed
        hash (the kind is part of the message, so a patient and a path never share a hash)."""
        if self._key is None:
            return value
        digest = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return digest.hexdigest()[:HASH_HEX]

    def scrub(self, text: str, ds: Dataset | None = None) -> str:
        """Free text as stored: unchanged when off, else `scrub`bed."""
        return text if self._key is None else scrub(text, ds)


def scrub(text: str, ds: Dataset | None = None) -> str:
    """`text` without UIDs and without the identifying values of `ds`."""
    for value in identifying_values(ds) if ds is not None else ():
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", REMOVED, text, flags=re.I)
    return _UID.sub(REMOVED, text)


def identifying_values(ds: Dataset) -> list[str]:
    """The identifying values a dataset holds, and each part of its person names (a series
    description may say "SMITH head"), longest first so a whole name goes before its parts."""
    values: set[str] = set()
    for tag in IDENTIFYING_TAGS:
        for value in as_list(ds.get(tag)):
            values.add(str(value).strip())
            if isinstance(value, PersonName):
                values.update(part.strip() for part in re.split(r"[\^=]", str(value)))
    return sorted((v for v in values if len(v) >= 2), key=len, reverse=True)


def as_list(value: object) -> list:
    """A tag's value as a list (multi-valued tags hold several; absent: none)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom warns and logs about odd values quoting them (a name, a UID cut short) and about
    truncated files naming their path: while medindex reads DICOM, neither reaches a log. A
    file that cannot be read fails with medindex's own, scrubbed, reason instead."""
    pydicom_log = logging.getLogger("pydicom")
    was_disabled = pydicom_log.disabled
    pydicom_log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_log.disabled = was_disabled
