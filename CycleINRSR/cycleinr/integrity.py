"""Input integrity: what a reader returns is checked against the file itself.

SimpleITK 2.5 (ITK 5.4) reads some damaged or lying files "successfully":
- a .nii or .nii.gz cut short comes back whole, the missing voxels zero;
- a .nii.gz whose data is corrupt (gzip CRC wrong) is read as is;
- NaN and Inf in a float NIfTI come back as 0: niftilib's ``nifti_read_buffer`` (nifti1_io.c)
  replaces every non-finite float by zero while loading, before ITK sees the buffer, whatever
  scl_slope says; so the raw values are scanned in the file itself;
- a DICOM series with a slice missing gets one mean spacing, wrong below the gap;
- a MetaImage or NRRD header may point its voxel data at any file on the host.
Each check raises InputError with one line naming the file and what is wrong. They run on the
headers and the raw bytes before ITK allocates the volume; the gzip check streams the file.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

CHUNK_BYTES = 1 << 20
INFLATED_BYTES = 8 << 20  # at most this much decompressed at a time (a small file may inflate 1000x)
# NIfTI datatype codes (nifti1.h) of the element types a scalar volume can have
NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
                1024: "i8", 1280: "u8"}


def _name(path: Path) -> str:
    return Path(path).name


# --- headers and memory --------------------------------------------------------------------------

def read_header(path: Path):
    """An ImageFileReader that has read the header only (size, pixel type), no voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        if _name(path).lower().endswith(".gz"):
            for _ in gzip_chunks(path):  # a damaged stream says so, rather than "no ImageIO"
                pass
        raise InputError(f"cannot read the header of {_name(path)}: {_itk_reason(error)}") from None
    return reader


def header_bytes(reader) -> int:
    """Bytes the image will take in memory once read (from the header alone)."""
    import SimpleITK as sitk

    sample = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    itemsize = sitk.GetArrayViewFromImage(sample).dtype.itemsize
    return math.prod(reader.GetSize()) * max(1, reader.GetNumberOfComponents()) * itemsize


def check_fits_in_memory(needed_bytes: int, label: str, available_bytes: int | None = None) -> None:
    """Refuse a header that claims more voxels than this host's free memory can hold."""
    if available_bytes is None:
        import psutil
        available_bytes = int(psutil.virtual_memory().available)
    if needed_bytes > available_bytes:
        raise InputError(f"{label} claims {needed_bytes / 2**30:,.1f} GiB of voxels, more than the "
                         f"{available_bytes / 2**30:,.1f} GiB of free memory; refused before reading")


# --- compressed streams and raw bytes ------------------------------------------------------------

def gzip_chunks(path: Path, offset: int = 0):
    """The decompressed bytes of a gzip file (or of a gzip stream starting at ``offset``), checked:
    every member complete (end marker) with a matching CRC-32 and length, else InputError.
    Members may follow one another (gzip allows it); zero padding after the last is ignored,
    as zlib's gzread (hence ITK) ignores it."""
    name = _name(path)
    inflater, members, pending = None, 0, b""
    with open(path, "rb") as raw:
        raw.seek(offset)
        while block := pending or raw.read(CHUNK_BYTES):
            pending = b""
            if inflater is None:
                if members and not block.strip(b"\0"):
                    continue  # zero padding after the last member
                if members and not block.startswith(b"\x1f\x8b"):
                    raise InputError(f"cannot read {name}: unknown data after its gzip stream")
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                while block and not inflater.eof:
                    yield inflater.decompress(block, INFLATED_BYTES)
                    block = inflater.unconsumed_tail
            except zlib.error as error:
                reason = str(error).split(":")[-1].strip()
                if reason in ("incorrect data check", "incorrect length check"):
                    what = "CRC-32" if "data" in reason else "length"
                    raise InputError(f"{name} is damaged: its data does not match the {what} recorded "
                                     "in its gzip trailer") from None
                raise InputError(f"cannot read {name}: damaged or not gzip data ({reason})") from None
            if inflater.eof:
                members, pending, inflater = members + 1, inflater.unused_data, None
    if inflater is not None or not members:
        raise InputError(f"{name} is truncated: its compressed data ends before the gzip end marker "
                         "(an interrupted copy?)")


def zlib_chunks(path: Path, offset: int = 0):
    """The decompressed bytes of a zlib stream (MetaImage CompressedData), checked: complete, Adler-32."""
    inflater = zlib.decompressobj()
    with open(path, "rb") as raw:
        raw.seek(offset)
        try:
            while (block := raw.read(CHUNK_BYTES)) and not inflater.eof:
                while block and not inflater.eof:
                    yield inflater.decompress(block, INFLATED_BYTES)
                    block = inflater.unconsumed_tail
        except zlib.error as error:
            if "incorrect data check" in str(error):
                raise InputError(f"{_name(path)} is damaged: its data does not match the Adler-32 "
                                 "checksum of its zlib stream") from None
            raise InputError(f"{_name(path)} is damaged: corrupt compressed data ({error})") from None
    if not inflater.eof:
        raise InputError(f"{_name(path)} is truncated: its compressed data ends before the end of "
                         "the zlib stream")


def plain_chunks(path: Path, offset: int = 0):
    with open(path, "rb") as raw:
        raw.seek(offset)
        while block := raw.read(CHUNK_BYTES):
            yield block


def check_data_size(actual: int, expected: int, label: str) -> None:
    """The voxel data must be exactly as long as the header says (short: truncated; long: the
    header's sizes are not those of the data)."""
    if actual < expected:
        raise InputError(f"{label} is truncated: it holds {actual:,} of the {expected:,} bytes of "
                         f"voxel data its header declares ({100 * actual / expected:.1f} %)")
    if actual > expected:
        raise InputError(f"{label} holds {actual:,} bytes of voxel data but its header declares "
                         f"{expected:,}: the header does not describe this data")


class FiniteScan:
    """Counts raw values of a float type fed chunk by chunk (chunks need not align to values)."""

    def __init__(self, dtype: np.dtype | None):
        self.dtype = np.dtype(dtype) if dtype is not None and np.dtype(dtype).kind == "f" else None
        self.pending = b""
        self.seen = 0
        self.bad = 0
        self.first_bad = -1

    def feed(self, chunk: bytes) -> None:
        if self.dtype is None:
            return
        data = self.pending + chunk if self.pending else chunk
        usable = len(data) // self.dtype.itemsize * self.dtype.itemsize
        values = np.frombuffer(data, self.dtype, count=usable // self.dtype.itemsize)
        bad = ~np.isfinite(values)
        count = int(np.count_nonzero(bad))
        if count:
            if self.first_bad < 0:
                self.first_bad = self.seen + int(np.argmax(bad))
            self.bad += count
        self.seen += values.size
        self.pending = bytes(data[usable:])


def check_finite_scan(scan: FiniteScan, size_xyz, label: str) -> None:
    if scan.bad:
        x, y, z = _unravel_xyz(scan.first_bad, size_xyz)
        raise InputError(f"{label} holds {scan.bad:,} NaN or infinite voxel values (the first at "
                         f"voxel i={x}, j={y}, k={z}); the reader would have shown them as 0")


def _unravel_xyz(index: int, size_xyz) -> tuple[int, int, int]:
    nx, ny = int(size_xyz[0]), int(size_xyz[1])
    return index % nx, (index // nx) % ny, index // (nx * ny)


def check_finite_image(image, label: str) -> None:
    """Refuse NaN/Inf in a float image as read (slab by slab: no volume-sized temporary)."""
    import SimpleITK as sitk

    volume = sitk.GetArrayViewFromImage(image)
    if volume.dtype.kind != "f":
        return
    for k in range(volume.shape[0]):
        bad = ~np.isfinite(volume[k])
        if bad.any():
            j, i = np.unravel_index(int(np.argmax(bad)), bad.shape)[:2]
            total = sum(int(np.count_nonzero(~np.isfinite(volume[s]))) for s in range(volume.shape[0]))
            raise InputError(f"{label} holds {total:,} NaN or infinite voxel values "
                             f"(the first at voxel i={i}, j={j}, k={k})")


# --- NIfTI ---------------------------------------------------------------------------------------

@dataclass
class NiftiLayout:
    vox_offset: int
    dtype: np.dtype          # the stored element type with the file's byte order
    size_xyz: tuple[int, ...]
    scl_slope: float
    scl_inter: float

    @property
    def data_bytes(self) -> int:
        return math.prod(self.size_xyz) * self.dtype.itemsize


def nifti_layout(path: Path) -> NiftiLayout:
    """The raw NIfTI-1/-2 header fields that say where the voxels are and what they are."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            head = stream.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"cannot read the NIfTI header of {_name(path)}: {error}") from None
    for order in "<>":
        size = np.frombuffer(head[:4], order + "i4")[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = np.frombuffer(head[40:56], order + "i2").astype(int)
            code, = np.frombuffer(head[70:72], order + "i2")
            vox_offset, slope, inter = np.frombuffer(head[108:120], order + "f4")
            break
        if size == 540 and len(head) >= 540:
            code, = np.frombuffer(head[12:14], order + "i2")
            dims = np.frombuffer(head[16:80], order + "i8").astype(int)
            vox_offset, = np.frombuffer(head[168:176], order + "i8")
            slope, inter = np.frombuffer(head[176:192], order + "f8")
            break
    else:
        raise InputError(f"{_name(path)} is not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if int(code) not in NIFTI_DTYPES:
        raise InputError(f"{_name(path)} has NIfTI datatype {int(code)}; a real scalar type is needed")
    count = int(dims[0])
    if not 1 <= count <= 7:
        raise InputError(f"{_name(path)} has an invalid NIfTI dim[0] = {count}")
    size_xyz = tuple(max(1, int(d)) for d in dims[1:count + 1])
    return NiftiLayout(int(vox_offset), np.dtype(order + NIFTI_DTYPES[int(code)]), size_xyz,
                       float(slope), float(inter))


def check_nifti_scaling(layout: NiftiLayout, label: str) -> None:
    """A non-finite scl_slope/scl_inter is dropped by niftilib without a word: refuse it."""
    if not (math.isfinite(layout.scl_slope) and math.isfinite(layout.scl_inter)):
        raise InputError(f"{label} has a non-finite intensity scaling in its header "
                         f"(scl_slope {layout.scl_slope}, scl_inter {layout.scl_inter})")


def check_nifti_data(path: Path, full: bool = False):
    """Data size, gzip completeness and CRC, and the raw float values, against the header.

    Returns None when everything is checked, or, for a gzip file that ITK keeps as stored (no
    scaling, native byte order), a check to run on the image once read: the gzip trailer's CRC-32
    over the header bytes and ITK's own buffer. That saves decompressing the file twice; and as
    niftilib's zeroing of NaN/Inf changes the buffer, a matching CRC also proves the raw values
    are those read (whose finiteness read_image checks). Where it does not match, the full
    streaming check says what is wrong. ``full`` forces that check (to explain a failed read)."""
    label = _name(path)
    layout = nifti_layout(path)
    check_nifti_scaling(layout, label)
    compressed = path.name.lower().endswith(".gz")
    scan = FiniteScan(layout.dtype)
    if not compressed and scan.dtype is None:
        check_data_size(path.stat().st_size - layout.vox_offset, layout.data_bytes, label)
        return None
    if compressed and _kept_as_stored(layout) and not full:
        trailer = gzip_trailer(path)
        if trailer is not None and trailer[1] == (layout.vox_offset + layout.data_bytes) % 2**32:
            return lambda image: _check_crc_of_image(path, layout, trailer[0], image)
    _stream_nifti(path, layout, compressed)
    return None


def _kept_as_stored(layout: NiftiLayout) -> bool:
    """ITK hands back the stored bytes unchanged: native byte order, no intensity scaling."""
    unscaled = layout.scl_slope == 0 or (layout.scl_slope == 1 and layout.scl_inter == 0)
    return unscaled and layout.dtype.isnative


def gzip_trailer(path: Path) -> tuple[int, int] | None:
    """(CRC-32, length mod 2**32) of the last gzip member, from the file's last 8 bytes."""
    with open(path, "rb") as raw:
        raw.seek(0, os.SEEK_END)
        if raw.tell() < 18:
            return None
        raw.seek(-8, os.SEEK_END)
        crc, size = np.frombuffer(raw.read(8), "<u4")
    return int(crc), int(size)


def _check_crc_of_image(path: Path, layout: NiftiLayout, expected_crc: int, image) -> None:
    import SimpleITK as sitk

    volume = sitk.GetArrayViewFromImage(image)
    if volume.dtype == layout.dtype and volume.size * volume.dtype.itemsize == layout.data_bytes:
        with gzip.open(path, "rb") as stream:
            crc = zlib.crc32(stream.read(layout.vox_offset))
        for slab in volume.reshape(-1, *volume.shape[-2:]):
            crc = zlib.crc32(slab, crc)
        if crc == expected_crc:
            return
    _stream_nifti(path, layout, compressed=True)  # says precisely what is wrong, if anything


def _stream_nifti(path: Path, layout: NiftiLayout, compressed: bool) -> None:
    """One pass over the (decompressed) file: gzip end and CRC, data size, raw float values."""
    label = _name(path)
    scan = FiniteScan(layout.dtype)
    skip, total = layout.vox_offset, 0
    for chunk in (gzip_chunks(path) if compressed else plain_chunks(path)):
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        total += len(chunk)
        if total > layout.data_bytes:  # no need to inflate the rest (nor a "zip bomb")
            raise InputError(f"{label} holds more voxel data than the {layout.data_bytes:,} bytes its "
                             "header declares: the header does not describe this data")
        scan.feed(chunk)
    check_data_size(total, layout.data_bytes, label)
    check_finite_scan(scan, layout.size_xyz, label)


# --- MetaImage (.mha, .mhd) ----------------------------------------------------------------------

def metaimage_fields(path: Path) -> tuple[dict[str, str], int, list[str]]:
    """(fields, header length in bytes, the lines after an ``ElementDataFile = LIST``)."""
    with open(path, "rb") as stream:
        text = stream.read(1 << 16)
    fields: dict[str, str] = {}
    position = 0
    while position < len(text):
        end = text.find(b"\n", position)
        end = len(text) if end < 0 else end + 1
        line = text[position:end].decode("latin-1").strip()
        position = end
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            fields[key] = value
            if key == "ElementDataFile":  # always the last field; the data follows
                break
    if "ElementDataFile" not in fields:
        raise InputError(f"{_name(path)} is not a MetaImage header (no ElementDataFile field)")
    listed = []
    if fields["ElementDataFile"].split()[0].upper() == "LIST":
        listed = [line.strip() for line in text[position:].decode("latin-1").splitlines() if line.strip()]
    return fields, position, listed


def metaimage_data_files(path: Path, fields: dict[str, str], listed: list[str]) -> list[str]:
    """The file names an .mhd header points its voxels at ('LOCAL': none)."""
    value = fields["ElementDataFile"]
    words = value.split()
    if value.upper() == "LOCAL":
        return []
    if words[0].upper() == "LIST":
        return listed
    if "%" in words[0] and len(words) >= 3:  # a printf pattern: name%03d.raw first last [step]
        return _expand_pattern(words[0], words[1:4])
    return [value]


def _expand_pattern(pattern: str, numbers: list[str]) -> list[str]:
    try:
        first, last = int(numbers[0]), int(numbers[1])
        step = int(numbers[2]) if len(numbers) > 2 else 1
        if step == 0 or abs(last - first) // abs(step) > 100_000:
            raise ValueError
        return [pattern % index for index in range(first, last + (1 if step > 0 else -1), step)]
    except (ValueError, TypeError):
        raise InputError(f"invalid data file pattern {pattern!r} {' '.join(numbers)}") from None


def check_local_metaimage(path: Path, fields: dict[str, str]) -> None:
    """An .mha holds its voxels itself: a header that points elsewhere would read another file."""
    if fields["ElementDataFile"].upper() != "LOCAL":
        raise InputError(f"{_name(path)} is an .mha whose ElementDataFile is "
                         f"{fields['ElementDataFile']!r}, not LOCAL: an .mha must hold its own voxels")


def confine_data_files(header: Path, names: list[str]) -> list[Path]:
    """Data files of a detached header (.mhd, .nhdr) must lie in the header's own folder (or
    below it), symbolic links resolved: a header must not read, say, /etc/passwd as voxels."""
    folder = header.parent.resolve()
    files = []
    for name in names:
        target = (header.parent / name).resolve()
        if target != folder and folder not in target.parents:
            raise InputError(f"{_name(header)} points its voxel data at {name!r}, outside the header's "
                             "own folder; refused (data files must sit beside the header)")
        if not target.is_file():
            raise InputError(f"{_name(header)} points its voxel data at {name!r}, which does not exist")
        files.append(target)
    return files


@dataclass
class MetaImageHeader:
    fields: dict[str, str]
    header_length: int          # bytes before LOCAL data
    data_files: list[Path]      # confined; empty for LOCAL


def metaimage_header(path: Path) -> MetaImageHeader:
    """The header, with LOCAL data required in an .mha and data files confined for an .mhd (both
    before ITK opens anything the header names)."""
    fields, header_length, listed = metaimage_fields(path)
    if path.suffix.lower() == ".mha":
        check_local_metaimage(path, fields)
    names = metaimage_data_files(path, fields, listed)
    return MetaImageHeader(fields, header_length, confine_data_files(path, names) if names else [])


def check_metaimage_data(path: Path, header: MetaImageHeader, expected_bytes: int, full: bool = False):
    """The voxel data (a zlib stream if compressed) complete and of the size the header declares.

    Returns None when everything is checked, or, for compressed data whose CompressedDataSize is
    given (ITK writes it), a check to run on the image once read: the stream's Adler-32 over
    ITK's buffer, which saves inflating the data twice; ``full`` inflates them now."""
    if len(header.data_files) > 1:
        return None  # one file per slice: MetaIO refuses a short one itself
    source = header.data_files[0] if header.data_files else path
    offset = 0 if header.data_files else header.header_length
    if header.fields.get("CompressedData", "False").lower() == "true":
        stored = header.fields.get("CompressedDataSize", "")
        if not full and stored.isdigit() and header.fields.get("BinaryDataByteOrderMSB", "False").lower() == "false":
            end = offset + int(stored)
            if source.stat().st_size < end:
                raise InputError(f"{_name(path)} is truncated: it holds {source.stat().st_size - offset:,} of "
                                 f"the {int(stored):,} bytes of compressed data its header declares")
            return lambda image: _check_adler_of_image(path, header, expected_bytes, source, end, image)
        total = sum(len(chunk) for chunk in zlib_chunks(source, offset))
        check_data_size(total, expected_bytes, _name(path))
        return None
    skip = int(header.fields.get("HeaderSize", "0") or 0)
    if skip >= 0:  # -1: the data are the file's last bytes, whatever precedes them
        check_data_size(source.stat().st_size - offset - skip, expected_bytes, _name(path))
    return None


def _check_adler_of_image(path: Path, header: MetaImageHeader, expected_bytes: int, source: Path,
                          end: int, image) -> None:
    import SimpleITK as sitk

    volume = sitk.GetArrayViewFromImage(image)
    if volume.dtype.isnative and volume.dtype.byteorder in "=<|" and volume.nbytes == expected_bytes:
        with open(source, "rb") as raw:
            raw.seek(end - 4)
            stored = int.from_bytes(raw.read(4), "big")
        adler = 1
        for slab in volume.reshape(-1, *volume.shape[-2:]):
            adler = zlib.adler32(slab, adler)
        if adler == stored:
            return
    check_metaimage_data(path, header, expected_bytes, full=True)  # says what is wrong, if anything


# --- NRRD (.nrrd, .nhdr) -------------------------------------------------------------------------

def nrrd_fields(path: Path) -> tuple[dict[str, str], int, list[str]]:
    """(fields, header length in bytes, the lines after a ``data file: LIST``); the header ends
    at the first blank line (attached data follow it)."""
    with open(path, "rb") as stream:
        text = stream.read(1 << 16)
    lines = text.split(b"\n")
    fields: dict[str, str] = {}
    listed: list[str] = []
    length = 0
    for number, raw in enumerate(lines):
        length += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if number == 0:
            if not line.startswith("NRRD"):
                raise InputError(f"{_name(path)} is not an NRRD file (no NRRD magic)")
            continue
        if not line.strip():
            break
        if line.startswith("#") or ":=" in line:
            continue
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            key = key.lower().replace(" ", "")
            fields[key] = value
            if key == "datafile" and value.split() and value.split()[0].upper() == "LIST":
                listed = [item.decode("latin-1").strip() for item in lines[number + 1:] if item.strip()]
                break
    return fields, length, listed


def nrrd_data_files(fields: dict[str, str], listed: list[str]) -> list[str]:
    value = fields.get("datafile")
    if not value:
        return []
    words = value.split()
    if words[0].upper() == "LIST":
        return listed
    if "%" in words[0] and len(words) >= 3:
        return _expand_pattern(words[0], words[1:4])
    return [value]


@dataclass
class NrrdHeader:
    fields: dict[str, str]
    header_length: int
    data_files: list[Path]      # confined; empty for attached data


def nrrd_header(path: Path) -> NrrdHeader:
    """The header, with its data files (if detached) confined to its folder, before ITK opens them."""
    fields, length, listed = nrrd_fields(path)
    names = nrrd_data_files(fields, listed)
    return NrrdHeader(fields, length, confine_data_files(path, names) if names else [])


def check_nrrd_data(path: Path, header: NrrdHeader, expected_bytes: int, full: bool = False) -> None:
    """Raw data of exactly the declared size (teem refuses short data but reads past a long
    file's extra bytes). Gzip data are left to teem, which checks them, unless ``full`` (to
    explain a read that failed)."""
    fields = header.fields
    encoding = fields.get("encoding", "").lower()
    if len(header.data_files) > 1 or encoding not in ("raw", "gzip", "gz"):
        return
    source = header.data_files[0] if header.data_files else path
    offset = 0 if header.data_files else header.header_length
    if encoding != "raw":
        if full:
            total = sum(len(chunk) for chunk in gzip_chunks(source, offset))
            check_data_size(total - int(fields.get("byteskip", "0") or 0), expected_bytes, _name(path))
        return
    try:
        line_skip, byte_skip = int(fields.get("lineskip", "0")), int(fields.get("byteskip", "0"))
    except ValueError:
        return
    if line_skip or byte_skip < 0:  # -1: the data are the file's last bytes
        return
    check_data_size(source.stat().st_size - offset - byte_skip, expected_bytes, _name(path))


# --- DICOM series --------------------------------------------------------------------------------

@dataclass
class DicomSlice:
    path: Path
    series: str
    orientation: np.ndarray      # 6 direction cosines (row, column)
    position: np.ndarray | None  # ImagePositionPatient
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    frames: int
    tilt: float


def _itk_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("/", "itk::", "ITK"))]
    return (useful or lines or ["unknown error"])[-1][:300]


def dicom_slices(folder: Path) -> list[DicomSlice]:
    """The DICOM image files in a folder, headers only (pixel data length checked against the
    file size); files that are not DICOM (a README, DICOMDIR) are left out."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(path, defer_size=1024)
        except InvalidDicomError:
            continue
        except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on damaged files
            raise InputError(f"{path.name} in {folder.name} is not a readable DICOM file: "
                             f"{str(error).splitlines()[0][:200] if str(error) else type(error).__name__}") from None
        if "PixelData" not in header or "DirectoryRecordSequence" in header:
            continue
        check_pixel_data_complete(path, header)
        slices.append(_slice_of(path, header))
    return slices


def check_pixel_data_complete(path: Path, header) -> None:
    """The pixel data element must end inside the file (a cut-short slice is otherwise padded)."""
    element = header.get_item(0x7FE00010, keep_deferred=True)  # offset and length, value unread
    tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if tell is None or length in (None, 0xFFFFFFFF):
        return  # encapsulated (compressed) pixel data: its decoder checks the fragments
    size = path.stat().st_size
    if tell + length > size:
        raise InputError(f"{path.name} is truncated: its pixel data needs {length:,} bytes, the file "
                         f"holds {max(0, size - tell):,} of them")
    needed = (int(header.get("Rows", 0)) * int(header.get("Columns", 0)) * int(header.get("BitsAllocated", 16))
              // 8 * int(header.get("SamplesPerPixel", 1)) * int(header.get("NumberOfFrames", 1) or 1))
    if length < needed:
        raise InputError(f"{path.name} holds {length:,} bytes of pixel data, its header declares {needed:,}")


def _slice_of(path: Path, header) -> DicomSlice:
    def numbers(keyword):
        value = header.get(keyword)
        return None if value is None else np.array([float(v) for v in value], dtype=float)

    orientation = numbers("ImageOrientationPatient")
    spacing = numbers("PixelSpacing")
    return DicomSlice(path=path, series=str(header.get("SeriesInstanceUID", "")),
                      orientation=orientation if orientation is not None and orientation.size == 6 else None,
                      position=numbers("ImagePositionPatient"),
                      rows=int(header.get("Rows", 0)), columns=int(header.get("Columns", 0)),
                      pixel_spacing=tuple(spacing) if spacing is not None else (1.0, 1.0),
                      frames=int(header.get("NumberOfFrames", 1) or 1),
                      tilt=float(header.get("GantryDetectorTilt", 0) or 0))


def check_one_series(slices: list[DicomSlice], folder: Path) -> None:
    series = sorted({item.series for item in slices})
    if len(series) > 1:
        counts = ", ".join(f"{_files(sum(item.series == uid for item in slices))} of series ...{uid[-12:]}"
                           for uid in series)
        raise InputError(f"{folder.name} mixes {len(series)} DICOM series ({counts}); "
                         "point at a folder with one")


def _files(count: int) -> str:
    return f"{count} file" + ("" if count == 1 else "s")


def check_same_grid(slices: list[DicomSlice], folder: Path) -> None:
    """One orientation, one matrix size and one pixel spacing for every slice."""
    first = slices[0]
    for item in slices[1:]:
        if (item.orientation is None) != (first.orientation is None) or (
                item.orientation is not None and not np.allclose(item.orientation, first.orientation, atol=1e-4)):
            raise InputError(f"{folder.name} mixes slice orientations: {item.path.name} is "
                             f"{_cosines(item.orientation)}, {first.path.name} {_cosines(first.orientation)}")
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise InputError(f"{folder.name} mixes slice sizes: {item.path.name} is {item.columns}x{item.rows}, "
                             f"{first.path.name} {first.columns}x{first.rows}")
        if not np.allclose(item.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise InputError(f"{folder.name} mixes pixel spacings: {item.path.name} has "
                             f"{_mm(item.pixel_spacing)}, {first.path.name} {_mm(first.pixel_spacing)}")


def _cosines(values) -> str:
    return "unknown" if values is None else "(" + " ".join(f"{v:g}" for v in values) + ")"


def _mm(values) -> str:
    return " x ".join(f"{v:g}" for v in values) + " mm"


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def sort_along_normal(slices: list[DicomSlice], folder: Path) -> tuple[list[DicomSlice], np.ndarray]:
    """Slices in order along the slice normal, and their positions (mm) along it."""
    missing = [item.path.name for item in slices if item.position is None or item.position.size != 3]
    if missing or slices[0].orientation is None:
        name = missing[0] if missing else slices[0].path.name
        raise InputError(f"{name} in {folder.name} has no image position/orientation: the slice "
                         "geometry cannot be known")
    normal = slice_normal(slices[0].orientation)
    distances = np.array([float(item.position @ normal) for item in slices])
    order = np.argsort(distances, kind="stable")
    return [slices[i] for i in order], distances[order]


def check_no_gantry_tilt(ordered: list[DicomSlice], folder: Path) -> None:
    """Refused, not handled: with a tilted gantry the slices are sheared (positions step sideways,
    not along the normal), which one ITK image (spacing + direction) cannot represent."""
    if len(ordered) < 2:
        return
    normal = slice_normal(ordered[0].orientation)
    travel = ordered[-1].position - ordered[0].position
    along = float(travel @ normal)
    sideways = float(np.linalg.norm(travel - along * normal))
    angle = math.degrees(math.atan2(sideways, abs(along)))
    if angle > 0.05:
        tag = f"; GantryDetectorTilt says {ordered[0].tilt:g}°" if ordered[0].tilt else ""
        raise InputError(f"{folder.name} is a gantry-tilted (sheared) series: the slices step "
                         f"{angle:.2f}° off their normal{tag}; refused: resample it onto a regular "
                         "grid first (e.g. Slicer's DICOM acquisition geometry regularization)")


def check_slice_spacing(ordered: list[DicomSlice], distances: np.ndarray, folder: Path) -> float:
    """No duplicate, missing or unevenly spaced slice positions; returns the slice spacing (mm)."""
    if len(ordered) < 2:
        return 0.0
    steps = np.diff(distances)
    step = float(np.median(steps))
    tolerance = 0.005 + 0.01 * abs(step)
    for index, gap in enumerate(steps):
        a, b = ordered[index], ordered[index + 1]
        if gap <= tolerance:
            raise InputError(f"{folder.name} has two slices at position {distances[index]:.2f} mm "
                             f"(along the slice normal): {a.path.name} and {b.path.name}")
    if step <= tolerance * 2:
        raise InputError(f"{folder.name}: slice spacing {step:.3g} mm is too small")
    for index, gap in enumerate(steps):
        if abs(gap - step) <= tolerance:
            continue
        a, b = ordered[index], ordered[index + 1]
        multiple = round(gap / step)
        if multiple >= 2 and abs(gap - multiple * step) <= tolerance * multiple:
            lost = ", ".join(f"{distances[index] + n * step:.2f}" for n in range(1, multiple))
            plural = "s" if multiple > 2 else ""
            raise InputError(f"{folder.name} has {multiple - 1} slice{plural} missing: position{plural} "
                             f"{lost} mm (along the slice normal), between {a.path.name} at "
                             f"{distances[index]:.2f} and {b.path.name} at {distances[index + 1]:.2f}")
        raise InputError(f"{folder.name} has unevenly spaced slices: {gap:.3f} mm between {a.path.name} "
                         f"and {b.path.name}, {step:.3f} mm elsewhere")
    return step


def dicom_series_files(folder: Path) -> tuple[list[Path], float]:
    """The files of the one DICOM series in ``folder``, ordered along the slice normal, after every
    series check; and the slice spacing they imply."""
    slices = dicom_slices(folder)
    if not slices:
        raise InputError(f"{folder} holds no DICOM series (and is not a volume file)")
    check_one_series(slices, folder)
    check_same_grid(slices, folder)
    if len(slices) == 1 or slices[0].frames > 1:
        return [item.path for item in slices], 0.0
    ordered, distances = sort_along_normal(slices, folder)
    check_slice_spacing(ordered, distances, folder)
    check_no_gantry_tilt(ordered, folder)
    return [item.path for item in ordered], float(np.median(np.diff(distances)))


def dicom_series_bytes(files: list[Path]) -> int:
    """Memory the series takes once read: the first slice's in-memory size times the slices."""
    return header_bytes(read_header(files[0])) * len(files)


def check_dicom_geometry(image, files: list[Path], spacing: float, folder: Path) -> None:
    """What ITK made of the series must agree with the headers (slice count and spacing)."""
    if len(files) < 2 or image.GetDimension() != 3:
        return
    if image.GetSize()[2] != len(files) or abs(image.GetSpacing()[2] - spacing) > 0.005 + 0.01 * spacing:
        raise InputError(f"the DICOM reader made {image.GetSize()[2]} slices {image.GetSpacing()[2]:.3f} mm "
                         f"apart of {folder.name}, its headers say {len(files)} slices {spacing:.3f} mm apart")


# --- one entry point per file --------------------------------------------------------------------

def check_volume_file(path: Path, suffix: str, full: bool = False):
    """Every check that can be made on a volume file from its header and raw bytes, before ITK
    allocates anything: data files, memory, data size, compressed streams, raw float values.
    Returns None, or a check to run on the image once read (see check_nifti_data and
    check_metaimage_data; ``full`` makes every check now)."""
    meta = metaimage_header(path) if suffix in (".mha", ".mhd") else None
    nrrd = nrrd_header(path) if suffix in (".nrrd", ".nhdr") else None
    reader = read_header(path)
    needed = header_bytes(reader)
    check_fits_in_memory(needed, _name(path))
    if suffix in (".nii", ".nii.gz"):
        return check_nifti_data(path, full)
    if meta is not None:
        return check_metaimage_data(path, meta, needed, full)
    if nrrd is not None:
        check_nrrd_data(path, nrrd, needed, full)
    return None
