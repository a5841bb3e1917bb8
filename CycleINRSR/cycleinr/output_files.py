"""Writing output files so that a failed write never looks like success.

Every file the engine writes (volumes, PNG figures, weights, checkpoints, reports) goes the
same way:

1. ``check_output_path`` before any work: supported format, no clash (unless overwriting), the
   folder exists, is writable (probed by creating and removing the temporary file), the name fits
   the file system, the disk has room.
2. ``claim_output``: a small hidden claim file per output name, created with O_EXCL and holding
   the writer's host and pid, so a second run racing for the same output is refused before it
   works, not at the end. A claim whose writer is dead (kill -9) is taken over.
3. The data goes to a short hidden temporary file in the same folder, named
   ``.cycleinr-<host>-<pid>-<random>.partial<suffix>``: short whatever the output's name, and
   recognisable, so a later run removes those whose writer is dead.
4. The temporary file is read back and checked (header and data size for every volume format,
   the whole compressed stream for .nii.gz/.nrrd/.mha) before it takes the output's name: ITK's
   NIfTI writer reports a short write only on stderr, so a truncated file would otherwise be
   renamed into place as a success.
5. It gets the mode a user expects (0666 minus the umask; the old file's mode with overwrite) and
   is moved into place: ``os.replace`` with overwrite, else a hard link that fails if the name
   exists meanwhile (no-replace), so two runs never mix and a clash is never silently replaced.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import time
import zlib
from pathlib import Path

import numpy as np

from .errors import OutputError

WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
_PARTIAL = re.compile(r"^\.cycleinr-([0-9a-f]{6})-(\d+)-[0-9a-f]+\.(partial|claim)")
_EMPTY_CLAIM_GRACE_S = 60.0  # a claim file is written right after it is created


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _identity() -> str:
    return f"{_host_tag()} {os.getpid()}"


def partial_name(suffix: str) -> str:
    """A short temporary name that says who writes it (host tag and pid)."""
    return f".cycleinr-{_host_tag()}-{os.getpid()}-{secrets.token_hex(3)}.partial{suffix}"


def _claim_path(path: Path) -> Path:
    digest = hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return path.parent / f".cycleinr-{_host_tag()}-0-{digest}.claim"


def _pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` lives (psutil: os.kill(pid, 0) would send Ctrl-C on Windows);
    with ``since`` (a file's mtime), a process started after that time is a reuse of the
    number, not the writer."""
    import psutil

    if pid <= 0:
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # cannot tell: keep its files
    return since is None or started <= since + 1.0


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary and claim files left in ``folder`` by writers on this host that are dead
    (kill -9, power loss); those of live writers and of other hosts (a shared folder) stay."""
    folder = Path(folder)
    removed = []
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if not match or match.group(1) != host:
            continue
        if match.group(3) == "claim":
            if not _claim_stale(Path(entry.path)):
                continue
        elif _pid_alive(int(match.group(2)), since=_mtime(entry.path)):
            continue
        with contextlib.suppress(OSError):
            os.remove(entry.path)
            removed.append(Path(entry.path))
    return removed


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_fits(path: str | os.PathLike) -> None:
    """The output's file name must fit its file system (NAME_MAX, usually 255 bytes)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent  # the nearest existing folder says which file system it will be
    name_bytes, limit = len(os.fsencode(path.name)), _name_max(probe)
    if name_bytes > limit:
        raise OutputError(f"output file name is {name_bytes} bytes long; the file system of {folder} "
                          f"allows at most {limit}")


def check_output_path(path: str | os.PathLike, overwrite: bool, expected_bytes: int = 0,
                      suffixes: tuple[str, ...] = WRITE_SUFFIXES) -> Path:
    """Everything knowable about an output before work: format, clash, folder, permission,
    name length, disk space. Raises OutputError with the reason."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffixes and suffix not in suffixes:
        raise OutputError(f"unsupported output format {path.name!r}; use {', '.join(suffixes)}")
    check_name_fits(path)
    if path.is_dir():
        raise OutputError(f"output is a folder: {path}")
    if path.exists() and not overwrite:
        raise OutputError(f"output exists: {path} (use --overwrite to replace it)")
    if path.exists() and not path.is_file():
        raise OutputError(f"output is not a regular file: {path}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"output folder is not a folder: {folder}")
        raise OutputError(f"output folder does not exist: {folder}")
    remove_stale_partials(folder)
    _probe_writable(folder, suffix)
    free = shutil.disk_usage(folder).free
    if expected_bytes and expected_bytes > free:
        raise OutputError(f"not enough disk space for the output: needs up to "
                          f"{expected_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free in {folder}")
    return path


def _probe_writable(folder: Path, suffix: str) -> None:
    """Create and remove the kind of temporary file the write will use: the honest test of
    permission, read-only mounts and ACLs (os.access says yes to root on a read-only mount)."""
    probe = folder / partial_name(suffix)
    try:
        handle = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as error:
        raise OutputError(f"cannot write in {folder}: {_reason(error)}") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.remove(probe)


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if error.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if error.errno == errno.EFBIG:
        return "file size limit exceeded (ulimit -f)"
    return error.strerror or str(error)


@contextlib.contextmanager
def claim_output(path: str | os.PathLike):
    """Hold the output name for this run: a second run for the same output is refused (before
    it works) while this one is alive. Re-entrant within one process."""
    path = Path(path)
    claim = _claim_path(path)
    mine = _identity()
    for _ in range(3):
        try:
            handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_claim(claim)
            if holder == mine:
                yield path  # an outer call of this process holds it
                return
            if not _claim_stale(claim):
                pid = holder.split()[-1] if holder else "?"
                raise OutputError(f"{path.name} is being written by another cycleinr run (pid {pid}); "
                                  "wait for it or choose another output name") from None
            with contextlib.suppress(OSError):
                os.remove(claim)  # its writer is dead
            continue
        except OSError as error:
            raise OutputError(f"cannot write in {path.parent}: {_reason(error)}") from None
        try:
            os.write(handle, mine.encode())
        finally:
            os.close(handle)
        break
    else:
        raise OutputError(f"cannot claim the output name {path.name}: another run keeps taking it")
    try:
        yield path
    finally:
        if _read_claim(claim) == mine:
            with contextlib.suppress(OSError):
                os.remove(claim)


def _read_claim(claim: Path) -> str | None:
    try:
        return claim.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _claim_stale(claim: Path) -> bool:
    """A claim is stale when its writer (on this host) is dead; an empty one (its writer died
    between creating and filling it) once it is a minute old."""
    holder = _read_claim(claim)
    parts = (holder or "").split()
    if len(parts) != 2 or not parts[1].isdigit():
        try:
            return time.time() - claim.stat().st_mtime > _EMPTY_CLAIM_GRACE_S
        except OSError:
            return False
    return parts[0] == _host_tag() and not _pid_alive(int(parts[1]), since=_mtime(claim))


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _mode_for(path: Path, overwrite: bool) -> int:
    """0666 minus the umask for a new file; the replaced file's mode with overwrite."""
    if overwrite:
        with contextlib.suppress(OSError):
            return stat.S_IMODE(os.stat(path).st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, verify=None, suffix: str | None = None):
    """Yield a temporary path to write; on success ``verify(partial)`` (raising OutputError if the
    file is not what was meant), set the mode, fsync, then move it to ``path`` (no-replace unless
    ``overwrite``). On any failure or interruption the temporary file is removed and ``path``
    (a good earlier output included) is untouched."""
    path = Path(path)
    suffix = suffix_of(path) if suffix is None else suffix
    with claim_output(path):
        partial = path.parent / partial_name(suffix)
        try:
            handle = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError as error:
            raise OutputError(f"cannot write {path.name}: {_reason(error)}") from None
        os.close(handle)
        try:
            yield partial
            if verify is not None:
                verify(partial)
            os.chmod(partial, _mode_for(path, overwrite))
            _fsync(partial)
            _commit(partial, path, overwrite)
        except OSError as error:
            raise OutputError(f"cannot write {path.name}: {_reason(error)}") from None
        finally:
            with contextlib.suppress(OSError):
                os.remove(partial)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _commit(partial: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(partial, path)
        return
    try:
        os.link(partial, path)  # fails if the name appeared meanwhile: never replace silently
    except FileExistsError:
        raise OutputError(f"output exists: {path} (written by someone else meanwhile; "
                          "use --overwrite to replace it)") from None
    except OSError:  # a file system without hard links (FAT, some network mounts)
        if os.path.lexists(path):
            raise OutputError(f"output exists: {path} (use --overwrite to replace it)") from None
        os.replace(partial, path)


def write_text_atomically(text: str, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """A small text file (report, JSON, CSV) through a verified temporary file."""
    data = text.encode("utf-8")

    def verify(partial: Path) -> None:
        if partial.read_bytes() != data:
            raise OutputError(f"cannot write {Path(path).name}: the file read back differs "
                              f"({partial.stat().st_size} of {len(data)} bytes){_short_write_cause(partial)}")

    with atomic_output(path, overwrite=overwrite, verify=verify, suffix=".txt") as partial:
        with open(partial, "wb") as handle:
            handle.write(data)
    return Path(path)


# ----------------------------------------------------------------------------------- volumes

def write_image(image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a SimpleITK image atomically and verified (see the module docstring)."""
    import SimpleITK as sitk

    from .native_messages import native_stderr_captured

    path = check_output_path(path, overwrite)
    suffix = suffix_of(path)
    with atomic_output(path, overwrite, verify=lambda partial: verify_volume_file(partial, image, path.name)) \
            as partial:
        with native_stderr_captured():  # niftilib prints "wrote only N of M bytes" and carries on
            try:
                sitk.WriteImage(image, str(partial), useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
            except RuntimeError as error:
                cause = _short_write_cause(partial)
                raise OutputError(f"cannot write {path.name}: {cause.lstrip(': ') or first_line(error)}") \
                    from None
    return path


def first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages put the useful sentence last, after file/line noise
    useful = [line for line in lines if not line.startswith(("/", "itk::", "ITK"))]
    return (useful or lines or ["unknown error"])[-1][:300]


def _short_write_cause(partial: Path) -> str:
    """Why a write came out short, where it can be told: the file size limit or a full disk."""
    try:
        size = os.stat(partial).st_size
    except OSError:
        size = 0
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY and size >= soft - 4096:
            return f": the file size limit (ulimit -f, {soft} bytes) stopped the write"
    except (ImportError, ValueError, OSError):
        pass
    try:
        if shutil.disk_usage(partial.parent).free < (1 << 20):
            return f": no space left on the device of {partial.parent}"
    except OSError:
        pass
    return ""


def verify_volume_file(partial: Path, image, name: str) -> None:
    """The written file must read back as the image meant: same grid and voxel type in its
    header, and all of its voxel data present (the whole compressed stream decoded)."""
    import SimpleITK as sitk

    def fail(detail: str):
        raise OutputError(f"cannot write {name}: {detail}{_short_write_cause(partial)}; "
                          f"nothing was written under that name")

    size = os.stat(partial).st_size
    if size == 0:
        fail("the written file is empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(partial))
    from .native_messages import native_stderr_captured
    try:
        with native_stderr_captured():
            reader.ReadImageInformation()
    except RuntimeError:
        fail(f"the written file's header cannot be read back ({size} bytes written)")
    if tuple(reader.GetSize()) != tuple(image.GetSize()) or reader.GetPixelID() != image.GetPixelID() \
            or reader.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel():
        fail(f"the written header says {reader.GetSize()} {reader.GetPixelIDTypeAsString()}, "
             f"not {image.GetSize()} {image.GetPixelIDTypeAsString()}")
    if not np.allclose(reader.GetSpacing(), image.GetSpacing(), rtol=1e-5, atol=1e-6) or \
            not np.allclose(reader.GetOrigin(), image.GetOrigin(), rtol=1e-5, atol=1e-4):
        fail("the written header's spacing or origin differs from the image's")
    data_bytes = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() * \
        int(image.GetSizeOfPixelComponent())
    got, expected = _data_bytes(partial, suffix_of(Path(name)), data_bytes)
    if got != expected:
        fail(f"the written file is incomplete ({got:,} of {expected:,} bytes of voxel data)")


def _data_bytes(path: Path, suffix: str, data_bytes: int) -> tuple[int, int]:
    """(bytes of data found, bytes expected) for the formats we write; compressed streams are
    decoded to the end, which also checks their CRC and length trailers."""
    if suffix == ".nii":
        with path.open("rb") as handle:
            offset = _nifti_data_offset(handle.read(352))
        return os.stat(path).st_size - offset, data_bytes
    if suffix == ".nii.gz":
        try:
            with gzip.open(path, "rb") as stream:
                offset = _nifti_data_offset(stream.read(352))
                return 352 + _stream_length(stream) - offset, data_bytes
        except (OSError, EOFError, zlib.error):
            return _partial_gzip_length(path) - 352, data_bytes
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if suffix == ".nrrd":
        end = head.find(b"\n\n")
        if end < 0:
            return 0, data_bytes
        fields = dict(line.split(":", 1) for line in head[:end].decode("latin-1").splitlines()[1:]
                      if ":" in line and not line.startswith("#"))
        encoding = fields.get("encoding", "raw").strip()
        return _payload_length(path, end + 2, encoding in ("gzip", "gz")), data_bytes
    if suffix == ".mha":
        marker = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", head)
        if not marker:
            return 0, data_bytes
        header = head[:marker.start()].decode("latin-1")
        compressed = re.search(r"CompressedData\s*=\s*True", header) is not None
        return _payload_length(path, marker.end(), compressed, zlib_stream=True), data_bytes
    return os.stat(path).st_size, os.stat(path).st_size  # no structural check known for it


def _nifti_data_offset(header: bytes) -> int:
    if len(header) < 352:
        return 352
    for order in ("<", ">"):
        if int(np.frombuffer(header[:4], dtype=f"{order}i4")[0]) == 348:
            return int(np.frombuffer(header[108:112], dtype=f"{order}f4")[0])
    return 352


def _stream_length(stream) -> int:
    total = 0
    while True:
        chunk = stream.read(1 << 22)
        if not chunk:
            return total
        total += len(chunk)


def _partial_gzip_length(path: Path) -> int:
    """How much of a damaged gzip stream decodes (for the message)."""
    total = 0
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            try:
                total += len(decoder.decompress(chunk))
            except zlib.error:
                break
    return total


def _payload_length(path: Path, start: int, compressed: bool, zlib_stream: bool = False) -> int:
    with path.open("rb") as handle:
        handle.seek(start)
        if not compressed:
            return os.stat(path).st_size - start
        decoder = zlib.decompressobj(zlib.MAX_WBITS if zlib_stream else 16 + zlib.MAX_WBITS)
        total = 0
        while chunk := handle.read(1 << 22):
            try:
                total += len(decoder.decompress(chunk))
            except zlib.error:
                return total
        return total if decoder.eof else -1 - total  # a stream cut short never matches


def write_png_atomically(picture, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """A PIL image to PNG through a verified temporary file."""
    path = Path(path)

    def verify(partial: Path) -> None:
        from PIL import Image
        try:
            with Image.open(partial) as reread:
                reread.load()
                if reread.size != picture.size:
                    raise OSError("size differs")
        except (OSError, SyntaxError, ValueError):
            raise OutputError(f"cannot write {path.name}: the PNG does not read back"
                              f"{_short_write_cause(partial)}") from None

    with atomic_output(path, overwrite=overwrite, verify=verify, suffix=".png") as partial:
        picture.save(partial, format="PNG")
    return path


# ------------------------------------------------------------------------ weights, checkpoints

def write_safetensors_atomically(tensors: dict, path: str | os.PathLike, metadata: dict | None = None,
                                 overwrite: bool = True) -> Path:
    """A safetensors file through a verified temporary file: the header must list every tensor
    with its shape, and the file must hold all the bytes the header points at."""
    from safetensors.torch import save_file

    path = Path(path)

    def verify(partial: Path) -> None:
        import json
        size = os.stat(partial).st_size
        try:
            with partial.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(length)) if 0 < length < size else None
        except (OSError, ValueError):
            header = None
        problem = None
        if not isinstance(header, dict):
            problem = "its header does not read back"
        else:
            entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
            end = max((entry["data_offsets"][1] for entry in entries.values()), default=0)
            if set(entries) != set(tensors) or any(list(entries[name]["shape"]) != list(tensors[name].shape)
                                                   for name in tensors):
                problem = "its header does not list the tensors written"
            elif size != 8 + length + end:
                problem = f"it is incomplete ({size:,} of {8 + length + end:,} bytes)"
        if problem:
            raise OutputError(f"cannot write {path.name}: {problem}{_short_write_cause(partial)}")

    with atomic_output(path, overwrite=overwrite, verify=verify, suffix=".safetensors") as partial:
        save_file(tensors, str(partial), metadata=metadata)
    return path
