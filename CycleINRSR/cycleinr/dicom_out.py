"""DICOM out: a super-resolved DICOM series written back as a derived DICOM series (for PACS).

The output is one file per slice of the output volume along the source series' stacking
direction (the image normal). Upsampling along the stacking axis gives more, thinner slices;
upsampling along an in-plane axis gives the same slices with more rows or columns. Either way
each file is a plane of the same orientation as the source, so a PACS shows it like the source.

What is copied from the source and why (a whitelist, so private tags and identifying attributes
such as operators, institution and device serial numbers never pass through):
- patient, study, frame of reference and clinical-trial attributes: the same patient, the same
  study, the same patient space (FrameOfReferenceUID kept, so the two series register);
- attributes that describe the whole acquisition and stay true of the derived pixels (modality,
  body part, patient position, contrast, kVp, kernel, MR sequence parameters, lossy compression
  history, de-identification status), only where they are the same on every source slice:
  one that varies from slice to slice (tube current, acquisition time ...) belongs to one
  acquired slice and is wrong for a new one, so it is dropped;
- window settings, rescale slope/intercept and the bit depth (BitsAllocated/Stored/HighBit,
  PixelRepresentation) of the source.
Everything per instance is made new: SOP Instance UIDs, Series Instance UID, InstanceNumber
(running the same way along the normal as the source's), ImagePositionPatient, SliceLocation
(where the source's is an affine function of position), PixelSpacing, SliceThickness,
SpacingBetweenSlices; ImageType is DERIVED\\SECONDARY; each file's SourceImageSequence names the
source slices it lies on or between. SliceThickness is the new slice spacing when the stacking
axis is upsampled (the network is trained to make slices as thin as their spacing) and the
source's otherwise.

The series is written into a hidden folder beside the target, every file is read back with
pydicom and checked, the whole series is read back with SimpleITK and compared with the volume,
and only then is the folder renamed into place.
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SUPPORTED_SOP_CLASSES = {CT_IMAGE_STORAGE: "CT Image Storage", MR_IMAGE_STORAGE: "MR Image Storage"}

# copied when equal on every source slice (see the module docstring)
SERIES_CONSTANT_KEYWORDS = (
    "SpecificCharacterSet",
    # patient
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OtherPatientIDsSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight",
    "EthnicGroup", "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "ResponsiblePerson", "ResponsibleOrganization", "AdditionalPatientHistory", "PregnancyStatus",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
    # clinical trial
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription",
    # study
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "StudyID", "StudyDescription", "ProcedureCodeSequence",
    # series and frame of reference
    "Modality", "Laterality", "BodyPartExamined", "PatientPosition", "AnatomicalOrientationType",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    # acquisition context that stays true of the derived pixels
    "ContrastBolusAgent", "ContrastBolusAgentSequence", "ContrastBolusRoute", "ContrastBolusVolume",
    "ContrastBolusTotalDose", "ContrastBolusIngredient", "ContrastBolusIngredientConcentration",
    "ProtocolName", "AcquisitionNumber", "KVP", "ConvolutionKernel", "ReconstructionDiameter",
    "ScanOptions", "ScanningSequence", "SequenceVariant", "MRAcquisitionType", "SequenceName",
    "RepetitionTime", "EchoTime", "InversionTime", "EchoTrainLength", "FlipAngle",
    "MagneticFieldStrength", "ImagingFrequency", "ImagedNucleus", "NumberOfAverages",
    # pixel history and meaning
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "BurnedInAnnotation", "RecognizableVisualFeatures", "RescaleType", "PhotometricInterpretation",
)
WINDOW_KEYWORDS = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction")

# type 1 (present, non-empty) and type 2 (present) attributes every written file must carry
REQUIRED_NONEMPTY = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "Rows", "Columns", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "RescaleIntercept", "RescaleSlope", "InstanceNumber", "SeriesDescription", "DerivationDescription",
    "SourceImageSequence", "PixelData",
)
REQUIRED_PRESENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer")

_POSITION_TOLERANCE = 1e-3  # mm: positions are written as 16-character decimal strings


@dataclass
class SourceSeries:
    """The source series' headers (no pixels), sorted along the image normal."""

    folder: Path
    headers: list  # pydicom Datasets, ascending along ``normal``
    normal: np.ndarray
    positions: np.ndarray  # each slice's position along ``normal`` (mm)

    @property
    def first(self):
        return self.headers[0]


def read_source_series(folder: str | os.PathLike) -> SourceSeries:
    """Headers of the one DICOM series in ``folder``; refuses, before any work, what cannot be
    written back as DICOM (not a DICOM series folder, another kind of image than CT or MR)."""
    import pydicom
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        kind = "a file" if folder.is_file() else "not found"
        raise InputError(f"--output-format dicom needs a DICOM series folder as input; {folder} is {kind} "
                         "(write NIfTI, NRRD or MHA for it instead)")
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise InputError(f"--output-format dicom needs a folder holding one DICOM series; {folder} holds "
                         f"{len(series)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    try:
        headers = [pydicom.dcmread(name, stop_before_pixels=True) for name in files]
    except Exception as error:  # pydicom raises several types for a damaged file
        raise InputError(f"cannot read the DICOM headers in {folder}: {error}") from None
    first = headers[0]
    sop_class = str(first.get("SOPClassUID", ""))
    if sop_class not in SUPPORTED_SOP_CLASSES:
        raise InputError(f"DICOM output supports CT and MR image series; {folder} is "
                         f"{getattr(first.get('SOPClassUID'), 'name', sop_class) or 'of unknown SOP class'}")
    for header in headers:
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if keyword not in header:
                raise InputError(f"{folder}: a slice has no {keyword}; its geometry cannot be written back")
        if int(header.get("SamplesPerPixel", 1)) != 1:
            raise InputError(f"{folder}: DICOM output supports grey-scale images only")
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.dot(np.asarray(h.ImagePositionPatient, float), normal) for h in headers])
    order = np.argsort(positions, kind="stable")
    return SourceSeries(folder, [headers[i] for i in order], normal, positions[order])


def check_dicom_inputs(items) -> None:
    """A batch with DICOM output takes DICOM series folders only: refused before any work."""
    for item in items:
        if not Path(item).is_dir():
            raise InputError(f"--output-format dicom needs DICOM series folders as input; {item} is a volume file")


def check_output_folder(output_dir: str | os.PathLike, input_dir: str | os.PathLike, overwrite: bool,
                        expected_bytes: int = 0) -> Path:
    """Refuse an output folder that exists (unless ``overwrite``), that is or holds or lies in the
    input, that holds anything but DICOM files (never replace a folder of other things), or that
    the disk cannot hold."""
    output_dir, input_dir = Path(output_dir), Path(input_dir)
    target, source = output_dir.resolve(), input_dir.resolve()
    if target == target.parent or output_dir.name in ("", ".", ".."):
        raise OutputError(f"name the output folder (got {str(output_dir)!r})")
    if target == source or target in source.parents or source in target.parents:
        raise OutputError(f"output folder {output_dir} is, holds or lies inside the input {input_dir}; "
                          "the input is never modified")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise OutputError(f"DICOM output is a folder, and {output_dir} is a file")
        if not overwrite:
            raise OutputError(f"output exists: {output_dir} (use --overwrite to replace it)")
        foreign = [entry.name for entry in output_dir.iterdir()
                   if not (entry.is_file() and entry.name.lower().endswith(".dcm"))]
        if foreign:
            raise OutputError(f"not replacing {output_dir}: it holds other things than .dcm files "
                              f"({foreign[0]!r}, ...)")
    parent = output_dir.parent if str(output_dir.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder's parent does not exist: {parent}")
    free = shutil.disk_usage(parent).free
    if expected_bytes and expected_bytes > free:
        raise OutputError(f"not enough disk space for the output: needs up to {expected_bytes / 2**20:.0f} MiB, "
                          f"{free / 2**20:.0f} MiB free in {parent}")
    return output_dir


def super_resolve_to_dicom(input_path, output_dir, scale=None, target_spacing=None, slice_axis=None,
                           overwrite: bool = False, **options):
    """The ``--output-format dicom`` job: check, read, super-resolve, write a derived series."""
    from .api import super_resolve_image
    from .jobs import expected_output
    from .volumes import read_image

    source = read_source_series(input_path)
    check_output_folder(output_dir, input_path, overwrite)
    image = read_image(input_path)
    grid = expected_output(image, scale, target_spacing, slice_axis)
    bits = int(source.first.get("BitsAllocated", 16))
    slices = grid.shape[0]
    check_output_folder(output_dir, input_path, overwrite,
                        expected_bytes=grid.voxels * bits // 8 + slices * (64 << 10) + (1 << 20))
    output, result = super_resolve_image(image, scale=scale, target_spacing=target_spacing,
                                         slice_axis=slice_axis, **options)
    del image
    write_dicom_series(output, source, output_dir, overwrite=overwrite, scale=result.scale,
                       slice_axis=result.slice_axis, model_name=result.model_name)
    return result


# ---------------------------------------------------------------------------------------------
# encoding


@dataclass(frozen=True)
class Encoding:
    """How stored pixel values map to output values: value = stored * slope + intercept."""

    slope: float
    intercept: float
    bits_allocated: int
    bits_stored: int
    signed: bool

    @property
    def stored_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    def fits(self, low: float, high: float) -> bool:
        stored_low, stored_high = self.stored_range
        ends = sorted(((low - self.intercept) / self.slope, (high - self.intercept) / self.slope))
        return np.rint(ends[0]) >= stored_low and np.rint(ends[1]) <= stored_high

    def encode(self, values: np.ndarray) -> np.ndarray:
        stored = (values.astype(np.float64) - self.intercept) / self.slope
        low, high = self.stored_range
        return np.clip(np.rint(stored), low, high).astype(self.dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float64) * self.slope + self.intercept


def choose_encoding(source: SourceSeries, low: float, high: float, integer_valued: bool) -> Encoding:
    """The source's slope, intercept and bit depth when the output's value range fits them (it
    does for a trained CT model, whose outputs stay in its window); else, in this order: BitsStored
    widened to BitsAllocated; the intercept moved by whole slope steps (so the source's values,
    and integers, stay exact); a new slope. The last two warn."""
    first = source.first
    rescales = {(float(h.get("RescaleSlope", 1)), float(h.get("RescaleIntercept", 0))) for h in source.headers}
    slope, intercept = max(rescales)  # several (per-slice rescales): the coarsest step
    bits_allocated = int(first.get("BitsAllocated", 16))
    if bits_allocated not in (8, 16, 32):
        bits_allocated = 16
    bits_stored = min(int(first.get("BitsStored", bits_allocated)), bits_allocated)
    signed = int(first.get("PixelRepresentation", 0)) == 1
    candidates = [Encoding(slope, intercept, bits_allocated, bits_stored, signed),
                  Encoding(slope, intercept, bits_allocated, bits_allocated, signed)]
    for encoding in candidates[: 2 if len(rescales) == 1 else 0]:
        if encoding.fits(low, high):
            return encoding
    stored_low, stored_high = candidates[1].stored_range
    steps_below = np.floor((low - intercept) / slope) - stored_low
    shifted = Encoding(slope, float(intercept + steps_below * slope), bits_allocated, bits_allocated, signed)
    if shifted.fits(low, high):
        chosen = shifted
    else:
        new_slope = ((high - low) or 1.0) / (stored_high - stored_low)
        if integer_valued:
            new_slope = float(np.ceil(new_slope))
        chosen = Encoding(new_slope, float(low - stored_low * new_slope), bits_allocated, bits_allocated, signed)
    warnings.warn(f"the output's values ({low:g} to {high:g}) do not fit the source's rescale and bit depth; "
                  f"written with slope {chosen.slope:g} and intercept {chosen.intercept:g}")
    return chosen


# ---------------------------------------------------------------------------------------------
# writing


def write_dicom_series(image, source: SourceSeries, output_dir: str | os.PathLike, overwrite: bool = False,
                       scale: float = 1.0, slice_axis: int = 0, model_name: str = "") -> Path:
    """Write ``image`` (on the source's patient space) as a derived series of ``source``, atomically.

    ``slice_axis`` is the array axis ([k, j, i]) that was upsampled: 0 is the stacking axis.
    """
    output_dir = Path(os.path.abspath(check_output_folder(output_dir, source.folder, overwrite)))
    volume, origin, spacing, direction = _canonical_volume(image, source)
    low, high = (float(volume.min()), float(volume.max())) if volume.size else (0.0, 0.0)
    encoding = choose_encoding(source, low, high, np.issubdtype(volume.dtype, np.integer))
    series = _SeriesHeader(source, scale, slice_axis, model_name, spacing, direction, encoding)
    partial = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        names = []
        for number in range(volume.shape[0]):
            position = origin + number * spacing[2] * direction[:, 2]
            dataset = series.slice_dataset(number, volume.shape[0], position, volume[number])
            name = partial / series.file_name(dataset.InstanceNumber, volume.shape[0])
            _save(dataset, name)
            names.append(name)
        verify_series(partial, names, volume, origin, spacing, direction, encoding, source)
        _publish(partial, output_dir)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write the DICOM series {output_dir}: {error}") from None
        raise
    return output_dir


def _canonical_volume(image, source: SourceSeries):
    """Array [k, j, i], origin, spacing (i, j, k) and direction columns with k along the normal.

    A DICOM series has no slice direction of its own: a reader stacks files along the image
    normal. An image whose third direction runs against the normal (negative slice direction)
    is the same voxels in patient space, stacked the other way round, so it is flipped here."""
    import SimpleITK as sitk

    volume = sitk.GetArrayViewFromImage(image)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    along = float(np.dot(direction[:, 2], normal))
    if abs(abs(along) - 1.0) > 1e-4:
        raise OutputError("the slice direction is not perpendicular to the image plane (a sheared grid, e.g. "
                          "gantry tilt); a DICOM image series cannot hold it: write NIfTI or NRRD instead")
    if abs(abs(float(np.dot(normal, source.normal))) - 1.0) > 1e-4:
        raise OutputError("the volume's orientation differs from its DICOM source's")
    if along < 0:
        origin = origin + (volume.shape[0] - 1) * spacing[2] * direction[:, 2]
        direction = direction.copy()
        direction[:, 2] = -direction[:, 2]
        volume = volume[::-1]
    return volume, origin, spacing, direction


class _SeriesHeader:
    """What every file of the new series shares, and how one slice's dataset is made."""

    def __init__(self, source: SourceSeries, scale, slice_axis, model_name, spacing, direction, encoding):
        import pydicom
        from pydicom.uid import generate_uid

        from . import __version__

        self.source, self.spacing, self.direction, self.encoding = source, spacing, direction, encoding
        self.series_uid = generate_uid(prefix=None)
        now = datetime.datetime.now()
        self.date, self.time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
        first = source.first
        shared = pydicom.Dataset()
        for keyword in SERIES_CONSTANT_KEYWORDS:
            values = [h.get(keyword) for h in source.headers]
            if values[0] is not None and all(v == values[0] for v in values[1:]):
                _copy_valid(first, shared, keyword)
        for keyword in WINDOW_KEYWORDS:
            if keyword in first:
                _copy_valid(first, shared, keyword)
        if "PhotometricInterpretation" not in shared:
            shared.PhotometricInterpretation = "MONOCHROME2"
        self.stacking_upsampled = slice_axis == 0
        slice_spacing = float(spacing[2])
        thickness = slice_spacing if self.stacking_upsampled else first.get("SliceThickness", slice_spacing)
        axis_name = "slice (stacking) axis" if self.stacking_upsampled else f"in-plane axis {'KJI'[slice_axis]}"
        shared.ImageType = ["DERIVED", "SECONDARY"] + list(_image_type(first)[2:3])
        shared.SeriesDescription = _trim(f"CycleINR x{scale:g} {model_name}: "
                                         f"{first.get('SeriesDescription') or ''}".rstrip(": "), 64)
        shared.SeriesNumber = int(first.get("SeriesNumber") or 0) + 1000
        shared.SeriesDate, shared.SeriesTime = self.date, self.time
        shared.Manufacturer = "CycleINR"
        shared.SoftwareVersions = f"cycleinr {__version__}"
        shared.DerivationDescription = _trim(
            f"CycleINR super-resolution x{scale:g} along the {axis_name} with model {model_name}, "
            f"from series {first.SeriesInstanceUID}", 1024)
        shared.DerivationCodeSequence = [_code("113085", "DCM", "Spatial resampling")]
        shared.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        shared.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing, column spacing
        shared.SliceThickness = _ds(float(thickness))
        shared.SpacingBetweenSlices = _ds(slice_spacing)
        shared.SamplesPerPixel = 1
        shared.BitsAllocated = encoding.bits_allocated
        shared.BitsStored = encoding.bits_stored
        shared.HighBit = encoding.bits_stored - 1
        shared.PixelRepresentation = 1 if encoding.signed else 0
        shared.RescaleSlope = _ds(encoding.slope)
        shared.RescaleIntercept = _ds(encoding.intercept)
        shared.BurnedInAnnotation = shared.get("BurnedInAnnotation", "NO")
        for keyword in REQUIRED_PRESENT:
            if keyword not in shared:
                setattr(shared, keyword, None)
        self.shared = shared
        self.instances_descend = _instances_descend(source)
        self.slice_location = _slice_location_rule(source)

    def file_name(self, instance: int, count: int) -> str:
        return f"IM{instance:0{max(4, len(str(count)))}d}.dcm"

    def slice_dataset(self, number: int, count: int, position: np.ndarray, pixels: np.ndarray):
        """Dataset of the ``number``-th slice (ascending along the normal)."""
        import copy

        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        dataset = copy.deepcopy(self.shared)
        dataset.SOPClassUID = self.source.first.SOPClassUID
        dataset.SOPInstanceUID = generate_uid(prefix=None)
        dataset.SeriesInstanceUID = self.series_uid
        dataset.InstanceCreationDate, dataset.InstanceCreationTime = self.date, self.time
        dataset.ContentDate, dataset.ContentTime = self.date, self.time
        dataset.InstanceNumber = count - number if self.instances_descend else number + 1
        dataset.ImagePositionPatient = [_ds(v) for v in position]
        if self.slice_location is not None:
            sign, offset = self.slice_location
            dataset.SliceLocation = _ds(sign * float(np.dot(position, self.source.normal)) + offset)
        references = _source_slices(self.source, float(np.dot(position, self.source.normal)),
                                    float(self.spacing[2]))
        purpose = _code("121322", "DCM", "Source image for image processing operation")
        items = []
        for index in references:
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID = self.source.headers[index].SOPClassUID
            item.ReferencedSOPInstanceUID = self.source.headers[index].SOPInstanceUID
            item.PurposeOfReferenceCodeSequence = [copy.deepcopy(purpose)]
            items.append(item)
        dataset.SourceImageSequence = items
        referenced_series = pydicom.Dataset()
        referenced_series.SeriesInstanceUID = self.source.first.SeriesInstanceUID
        referenced_series.ReferencedInstanceSequence = [_reference(i) for i in items]
        dataset.ReferencedSeriesSequence = [referenced_series]
        dataset.Rows, dataset.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        dataset.PixelData = np.ascontiguousarray(self.encoding.encode(pixels)).tobytes()
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
        return dataset


def _save(dataset, path: Path) -> None:
    """Write one file, refusing values that break their VR (too long, wrong characters)."""
    from pydicom import config

    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        dataset.save_as(path, enforce_file_format=True)
    except (ValueError, TypeError) as error:
        raise OutputError(f"cannot write a valid DICOM file: {error}") from None
    finally:
        config.settings.writing_validation_mode = previous


def _publish(partial: Path, output_dir: Path) -> None:
    """Rename the verified folder into place; an old output is moved aside first and removed
    only once the new one is in place (restored if that rename fails)."""
    if not output_dir.exists():
        os.rename(partial, output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".old", dir=output_dir.parent))
    os.rmdir(old)
    os.rename(output_dir, old)
    try:
        os.rename(partial, output_dir)
    except BaseException:
        os.rename(old, output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# verification


def verify_series(folder: Path, names: list[Path], volume: np.ndarray, origin, spacing, direction,
                  encoding: Encoding, source: SourceSeries) -> None:
    """Every file read back with pydicom (strict VR checks) carries the required attributes and
    its slice; the folder read back with SimpleITK's series reader is the volume, on its grid."""
    import pydicom
    import SimpleITK as sitk
    from pydicom import config

    def fail(reason: str):
        raise OutputError(f"the written DICOM series failed its check ({reason}); nothing was written")

    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    instance_uids, series_uids = set(), set()
    try:
        for number, name in enumerate(names):
            try:
                dataset = pydicom.dcmread(name)
                pixels = dataset.pixel_array
            except Exception as error:
                fail(f"{name.name} cannot be read back: {error}")
            missing = [k for k in REQUIRED_NONEMPTY if k not in dataset or dataset.data_element(k).value in
                       (None, "", b"")] + [k for k in REQUIRED_PRESENT if k not in dataset]
            if missing:
                fail(f"{name.name} lacks {', '.join(missing)}")
            if dataset.file_meta.MediaStorageSOPInstanceUID != dataset.SOPInstanceUID:
                fail(f"{name.name}: file meta and dataset disagree on the SOP Instance UID")
            for uid in (dataset.SOPInstanceUID, dataset.SeriesInstanceUID):
                if not uid.is_valid:
                    fail(f"{name.name}: invalid UID {uid}")
            if any(tag.is_private for tag in dataset.keys()):
                fail(f"{name.name} carries private tags")
            instance_uids.add(dataset.SOPInstanceUID)
            series_uids.add(dataset.SeriesInstanceUID)
            if not np.array_equal(pixels, encoding.encode(volume[number])):
                fail(f"{name.name}: pixel data differ from the volume")
            position = origin + number * spacing[2] * direction[:, 2]
            if not (np.allclose(np.asarray(dataset.ImagePositionPatient, float), position, atol=_POSITION_TOLERANCE)
                    and np.allclose(np.asarray(dataset.ImageOrientationPatient, float),
                                    np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-6)
                    and np.allclose(np.asarray(dataset.PixelSpacing, float), spacing[[1, 0]], rtol=1e-7)
                    and np.isclose(float(dataset.SpacingBetweenSlices), spacing[2], rtol=1e-7)):
                fail(f"{name.name}: position, orientation or spacing is not that of slice {number} of the volume")
    finally:
        config.settings.reading_validation_mode = previous
    if len(instance_uids) != len(names) or len(series_uids) != 1:
        fail("SOP Instance UIDs not unique or more than one series")
    source_uids = {str(h.SOPInstanceUID) for h in source.headers} | {str(source.first.SeriesInstanceUID)}
    if (instance_uids | series_uids) & source_uids:
        fail("a UID of the source was reused")
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if list(ids) != list(series_uids):
        fail(f"SimpleITK finds series {list(ids)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    if len(files) != len(names):
        fail(f"SimpleITK finds {len(files)} of {len(names)} files")
    reader.SetFileNames(files)
    try:
        read_back = reader.Execute()
    except RuntimeError as error:
        fail(f"SimpleITK cannot read it: {error}")
    array = sitk.GetArrayViewFromImage(read_back)
    if array.shape != volume.shape:
        fail(f"SimpleITK reads shape {array.shape}, {volume.shape} was written")
    for number in range(volume.shape[0]):  # slab by slab: no volume-sized temporary
        expected = encoding.decode(encoding.encode(volume[number]))
        if not np.allclose(array[number], expected, rtol=0, atol=1e-6 * max(1.0, float(np.abs(expected).max()))):
            fail(f"SimpleITK reads different voxel values on slice {number}")
    geometry = (np.asarray(read_back.GetOrigin()), np.asarray(read_back.GetSpacing()),
                np.asarray(read_back.GetDirection()).reshape(3, 3))
    if not (np.allclose(geometry[0], origin, atol=_POSITION_TOLERANCE)
            and np.allclose(geometry[1], spacing, rtol=1e-6, atol=1e-6)
            and np.allclose(geometry[2], direction, atol=1e-6)):
        fail(f"SimpleITK reads origin {tuple(geometry[0])}, spacing {tuple(geometry[1])}, direction "
             f"{tuple(geometry[2].ravel())}; the volume has {tuple(origin)}, {tuple(spacing)}, "
             f"{tuple(direction.ravel())}")


# ---------------------------------------------------------------------------------------------
# helpers


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _copy_valid(source, target, keyword: str) -> None:
    """Copy one attribute if its value is valid for its VR; a source's invalid value (too long,
    wrong characters: readers tolerate them) is dropped with a warning, not written on."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    element = source.data_element(keyword)
    try:
        if element.VR in _TEXT_VRS and element.value is not None:
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                validate_value(element.VR, value if isinstance(value, bytes) else str(value), config.RAISE)
    except ValueError as error:
        warnings.warn(f"not copying {keyword} from the source: its value is invalid ({error})")
        return
    setattr(target, keyword, element.value)


def _ds(value: float):
    from pydicom.valuerep import DSfloat
    value = float(value)
    return DSfloat(0.0 if value == 0 else value, auto_format=True)


def _trim(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def _code(value: str, scheme: str, meaning: str):
    import pydicom
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _reference(source_item):
    import pydicom
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source_item.ReferencedSOPClassUID
    item.ReferencedSOPInstanceUID = source_item.ReferencedSOPInstanceUID
    return item


def _image_type(header) -> list[str]:
    value = header.get("ImageType") or []
    return [value] if isinstance(value, str) else list(value)


def _instances_descend(source: SourceSeries) -> bool:
    """True when the source's InstanceNumber falls as slices go up the normal (as in many CTs
    numbered head first): the output numbers its slices the same way."""
    numbers = [h.get("InstanceNumber") for h in source.headers]
    if len(numbers) < 2 or any(n is None for n in numbers):
        return False
    return int(numbers[-1]) < int(numbers[0])


def _slice_location_rule(source: SourceSeries):
    """(sign, offset) with SliceLocation = sign * position along the normal + offset, where the
    source's SliceLocation follows such a rule on every slice; None (not written) otherwise."""
    locations = [h.get("SliceLocation") for h in source.headers]
    if any(value is None for value in locations):
        return None
    locations = np.asarray([float(v) for v in locations])
    for sign in (1.0, -1.0):
        offsets = locations - sign * source.positions
        if np.ptp(offsets) < 1e-2:
            return sign, float(np.mean(offsets))
    return None


def _source_slices(source: SourceSeries, position: float, spacing: float) -> list[int]:
    """Indices of the source slices an output slice at ``position`` lies on (one) or between (two)."""
    positions = source.positions
    nearest = int(np.argmin(np.abs(positions - position)))
    if abs(positions[nearest] - position) <= max(_POSITION_TOLERANCE, 1e-3 * spacing):
        return [nearest]
    above = int(np.searchsorted(positions, position))
    above = min(max(above, 1), len(positions) - 1)
    return [above - 1, above]
