"""De-identification of DICOM: identities become keyed hashes, identifying text never leaves.

The reader builds payloads from an allow-list of tags (pipeline/sources/dicom.py), so names,
IDs, dates of birth and UIDs never reach a payload as such. What is left to this module: the
patient, study and series identities and file keys, kept as HMAC-SHA256 hashes with a secret
key (the same on every worker, so grouping and filtering per patient still work, and
unguessable without the key: a hash of a bare patient ID could be reversed by trying every ID),
and the text that is kept, cleaned as DICOM PS3.15's Basic Application Level Confidentiality
Profile asks (Table E.1-1): of the attributes the reader keeps, the profile removes Series
Description unless descriptors are cleaned (its Clean Descriptors Option, applied here: every
identifying value of the file and anything shaped like a date, an ID or a UID goes), keeps
Modality, Body Part Examined and Manufacturer (coded values are kept only when they are codes),
and keeps sex, age and study date only under its Retain Patient Characteristics and Retain
Longitudinal Temporal Information (full dates) options, which medindex applies. Failure reasons
lose the file's identifying values and UIDs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from pydicom import DataElement, Dataset
from pydicom.multival import MultiValue

# Every person name (VR PN) and date (DA, DT) a file holds is identifying wherever it appears
# (the profile removes or replaces them all, and every UID, which `_UID` finds by its shape);
# these attributes of other VRs hold the identifiers, contact details, places and devices of
# Table E.1-1.
IDENTIFYING_VRS = frozenset({"PN", "DA", "DT"})
IDENTIFYING_TEXT = frozenset(
    {
        # the patient: identifiers, contact, residence, service record
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "MedicalRecordLocator",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "RegionOfResidence",
        "CountryOfResidence",
        "PatientInstitutionResidence",
        "CurrentPatientLocation",
        "MilitaryRank",
        "BranchOfService",
        "Occupation",
        "ResponsibleOrganization",
        "InsurancePlanIdentification",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
        # the visit: accession, orders, procedures, admissions
        "AccessionNumber",
        "StudyID",
        "AdmissionID",
        "IssuerOfAdmissionID",
        "ServiceEpisodeID",
        "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        # people and places: addresses, telephones, institution, stations, locations
        "PersonAddress",
        "PersonTelephoneNumbers",
        "PersonTelecomInformation",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "OrderCallbackPhoneNumber",
        "OrderEntererLocation",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "StationName",
        "StationAETitle",
        "PerformedStationName",
        "ScheduledStationName",
        "PerformedLocation",
        "ScheduledStudyLocation",
        "RequestedProcedureLocation",
        "ScheduledProcedureStepLocation",
        # devices that name a site
        "DeviceSerialNumber",
        "PlateID",
        "CassetteID",
        "GantryID",
        "GeneratorID",
        "DetectorID",
    }
)
# Text shaped like what identifies, whatever file it came from. A UID is dotted digits.
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_SHAPES = (
    _UID,
    re.compile(r"\b\d{1,2}([/.-])\d{1,2}\1(?:\d{4}|\d{2})\b"),  # 02/01/1960, 1.2.60
    re.compile(r"\b\d{4}([/.-])\d{1,2}\1\d{1,2}\b"),  # 1960-02-01
    re.compile(rf"\b\d{{1,2}}[ -]?{_MONTH}[ -]?(?:\d{{4}}|\d{{2}})\b", re.I),  # 1 Feb 1960
    re.compile(rf"\b{_MONTH} \d{{1,2}},? \d{{4}}\b", re.I),  # February 1, 1960
    re.compile(r"\b\d{6,}\b"),  # record and telephone numbers, 19600201
    re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),  # e-mail addresses
)
# A coded value (VR CS): letters, digits, space and underscore, at most 16 characters (the
# standard's are capitals; some exports write "Chest": kept, it is no less a code).
_CODE = re.compile(r"[A-Za-z0-9 _]{1,16}")
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

    def cleaner(self, ds: Dataset) -> Cleaner:
        """How the text of `ds` is kept: as it is when off, else cleaned of its identifiers."""
        return Cleaner(ds if self.active else None)


class Cleaner:
    """The text a file's payload keeps: descriptions and codes, cleaned of every identifying
    value the file holds (`ds` None: kept as it is, de-identification is off)."""

    def __init__(self, ds: Dataset | None) -> None:
        self._values = _alternatives(identifying_values(ds)) if ds is not None else None
        self.active = ds is not None

    def text(self, value: str) -> str:
        """Free text (a description), each identifying part replaced by `[removed]`."""
        if not self.active:
            return value
        return _replace(_SHAPES, _replace((self._values,), value))

    def code(self, value: str, allowed: frozenset[str] | None = None) -> str | None:
        """A coded value, or None where it is no code (not in the CS repertoire, not among the
        `allowed` terms) or holds an identifying value: a code cannot be half removed."""
        if not self.active:
            return value
        is_code = _CODE.fullmatch(value) and (allowed is None or value in allowed)
        return value if is_code and self.text(value) == value else None


def scrub(text: str, ds: Dataset | None = None) -> str:
    """`text` (a failure reason) without UIDs and without the identifying values of `ds`."""
    values = _alternatives(identifying_values(ds)) if ds is not None else None
    return _replace((values, _UID), text)


def identifying_values(ds: Dataset) -> tuple[str, ...]:
    """The identifying values a dataset holds, in its sequences too: every person name (and
    each part of it: a description may say "SMITH head") and date, and the values of
    `IDENTIFYING_TEXT` (an address, each part of it too); longest first, so that a whole name
    goes before its parts."""
    values: set[str] = set()
    for element in _elements(ds):
        if element.VR in IDENTIFYING_VRS or element.keyword in IDENTIFYING_TEXT:
            for value in map(str, as_list(element.value)):
                values.add(value.strip())
                if element.VR == "PN" or element.keyword.endswith("Address"):
                    values.update(part.strip() for part in re.split(r"[\^=,\n]", value))
    return tuple(sorted((v for v in values if len(v) >= 2), key=lambda v: (-len(v), v)))


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element of `ds`, items of sequences included; one whose value pydicom cannot
    convert (a malformed file) holds nothing to read and is passed over."""
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except Exception:  # any conversion error: the value cannot be read
            continue
        yield element
        if element.VR == "SQ":
            for item in element.value or ():
                yield from _elements(item)


@lru_cache(maxsize=64)
def _alternatives(values: tuple[str, ...]) -> re.Pattern | None:
    """One pattern matching any of `values` as a whole word, in their order (made once for the
    files of a series, which share them)."""
    if not values:
        return None
    either = "|".join(re.escape(value) for value in values)
    return re.compile(rf"(?<!\w)(?:{either})(?!\w)", re.I)


def _replace(patterns: tuple[re.Pattern | None, ...], text: str) -> str:
    for pattern in patterns:
        if pattern is not None:
            text = pattern.sub(REMOVED, text)
    return text


def as_list(value: object) -> list:
    """A tag's value as a list (multi-valued tags hold several; absent: none)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue) else [value]


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom warns and logs about odd values quoting them (a name, a UID cut short) and about
    truncated files naming their path: while medindex reads DICOM, neither reaches a log. A
    file that cannot be read fails with medindex's own, scrubbed, reason instead. Its logger
    stays silent for good once a process reads DICOM: a switch turned back on after each read
    would race between the decoding threads."""
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.disabled = True
    pydicom_log.propagate = False  # its children (the pixel decoders') log through it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
