#!/usr/bin/env python3
"""Rebuild CycleINR's training and hold-out CT volumes from the data manifest (manifest.json).

Every volume is a real scan taken from a public source named in the manifest with its exact
commit (GitHub) or package version (Debian), never a copy kept in this repository. For each entry:

1. get the source: a local git directory per repository (what a ``git clone --mirror`` gives,
   found under ``--mirror-root`` or named with ``--repo OWNER/NAME=GITDIR``), else a fresh
   ``git clone --mirror`` from GitHub when the network allows; a Debian package is fetched with
   ``apt-get download`` and unpacked with ``dpkg -x``;
2. copy the entry's files out of that commit blob by blob (files a snapshot lacks are skipped);
   a DICOM entry may name the even run of slices it uses (``slices``) where the published series
   itself misses some;
3. convert the DICOM series (or volume file) with SimpleITK to int16 HU NIfTI, keeping the
   scanner's geometry and clipping the reconstruction's padding (e.g. -3024) to -1024 HU;
4. check the result against the manifest (size, spacing) and print a summary.

Usage:
    python build_training_set.py --output DIR [--mirror-root DIR] [--repo OWNER/NAME=GITDIR ...]
                                 [--use train|holdout|all] [--only ID ...] [--no-clone]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = Path(__file__).resolve().with_name("manifest.json")
AIR_HU = -1024
# Kept for independent checks of the model: never downloaded, trained or tuned on.
FORBIDDEN_REPOS = ("plotly/dash-vtk", "neurolabusc/dcm_qa_ct")
SPACING_TOLERANCE_MM = 1e-3
FINE_AXIS_MM = 1.6


class BuildError(Exception):
    """A source cannot be had, or a built volume does not match its manifest entry (one line)."""


# Manifest -------------------------------------------------------------------------------------

def load_manifest(path: str | Path = MANIFEST) -> dict:
    """The manifest as a dict; refuses an entry from a forbidden source before anything is fetched."""
    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    for entry in manifest["volumes"]:
        repo = entry["source"].get("repo", "")
        if repo.lower() in (name.lower() for name in FORBIDDEN_REPOS):
            raise BuildError(f"{entry['id']}: {repo} is kept for independent checks and must not be used")
    return manifest


def fine_axes(spacing) -> list[str]:
    """Axes (x, y, z) whose spacing is fine enough to give high-resolution training targets."""
    return [name for name, step in zip("xyz", spacing) if step <= FINE_AXIS_MM]


# Sources ---------------------------------------------------------------------------------------

def _is_git_dir(path: Path) -> bool:
    """True for a git directory itself (bare mirror or a work tree's .git), not for any folder
    that merely lies inside some repository."""
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "--absolute-git-dir"],
                            capture_output=True, text=True)
    return result.returncode == 0 and Path(result.stdout.strip()).resolve() == path.resolve()


def find_git_dir(repo: str, mirror_root: Path | None, explicit: dict[str, Path]) -> Path | None:
    """A local git directory holding ``repo``: given explicitly, or under the mirror root as
    ``owner+name``, ``owner/name`` or ``name.git`` (with or without a ``repo``/``.git`` inside)."""
    if repo in explicit:
        return explicit[repo]
    if mirror_root is None:
        return None
    owner, name = repo.split("/")
    for base in (mirror_root / f"{owner}+{name}", mirror_root / owner / name,
                 mirror_root / f"{name}.git", mirror_root / name):
        for candidate in (base / "repo" / ".git", base / "repo", base / ".git", base):
            if candidate.is_dir() and _is_git_dir(candidate):
                return candidate
    return None


def clone_mirror(repo: str, work: Path) -> Path:
    """``git clone --mirror`` from GitHub (needs the network)."""
    target = work / "clones" / repo.replace("/", "+")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["git", "clone", "--mirror", "--quiet", f"https://github.com/{repo}.git",
                                 str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise BuildError(f"cannot clone {repo}: {result.stderr.strip().splitlines()[-1:]}")
    return target


def copy_tree_from_commit(git_dir: Path, commit: str, path: str, destination: Path) -> int:
    """Copy ``path`` at ``commit`` into ``destination`` blob by blob; a blob the local copy lacks
    (snapshots omit large files) is skipped. Returns how many files were written."""
    listing = subprocess.run(["git", "-C", str(git_dir), "ls-tree", "-r", "-z", commit, "--", path],
                             capture_output=True)
    if listing.returncode != 0:
        raise BuildError(f"{git_dir}: commit {commit} not found ({listing.stderr.decode().strip()})")
    written = 0
    for record in listing.stdout.split(b"\0"):
        if not record:
            continue
        meta, name = record.split(b"\t", 1)
        kind, blob = meta.split()[1:3]
        if kind != b"blob":
            continue
        content = subprocess.run(["git", "-C", str(git_dir), "cat-file", "blob", blob.decode()],
                                 capture_output=True)
        if content.returncode != 0:
            continue
        target = destination / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.stdout)
        written += 1
    if written == 0:
        raise BuildError(f"{git_dir}: nothing at {commit}:{path}")
    return written


def unpack_debian(package: str, version: str, work: Path) -> Path:
    """``apt-get download package=version`` and ``dpkg -x`` it; returns the unpacked root."""
    root = work / "debian" / f"{package}_{version}"
    if root.exists():
        return root
    download = work / "debian" / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=download,
                            capture_output=True, text=True)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise BuildError(f"apt-get download {package}={version} failed: {result.stderr.strip()[-200:]}")
    root.mkdir(parents=True)
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root


# Conversion ------------------------------------------------------------------------------------

def _series_files(folder: Path, series_uid: str | None) -> list[str]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise BuildError(f"{folder} holds no DICOM series")
    if series_uid is None:
        if len(uids) > 1:
            raise BuildError(f"{folder} holds {len(uids)} DICOM series; name one with series_uid")
        series_uid = uids[0]
    elif series_uid not in uids:
        raise BuildError(f"{folder} has no DICOM series {series_uid}")
    return list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))


def check_uniform_steps(files: list[str]) -> float:
    """The slice step of a sorted series; refuses gaps or uneven steps (a volume with them would
    give wrong training pairs)."""
    import SimpleITK as sitk

    positions, normal = [], None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if normal is None:
            cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
            normal = np.cross(cosines[:3], cosines[3:])
        position = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        positions.append(float(position @ normal))
    steps = np.diff(positions)
    if steps.size == 0:
        raise BuildError("a series needs at least two slices")
    if np.max(np.abs(steps - steps.mean())) > 0.01 * abs(steps.mean()) + 1e-3:
        raise BuildError(f"uneven slice steps {np.min(steps):.3f}..{np.max(steps):.3f} mm "
                         f"(missing or duplicate slices)")
    return float(abs(steps.mean()))


def read_invesalius_project(path: Path):
    """The CT of an InVesalius project (.inv3: a gzipped tar holding main.plist and the raw
    int16 matrix it describes); InVesalius stores no origin or direction, so both are identity."""
    import plistlib
    import tarfile

    import SimpleITK as sitk

    with tarfile.open(path, "r:gz") as archive:
        members = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
        if "main.plist" not in members:
            raise BuildError(f"{path.name} is not an InVesalius project (no main.plist)")
        header = plistlib.loads(archive.extractfile(members["main.plist"]).read())
        matrix = header["matrix"]
        raw = archive.extractfile(members[matrix["filename"]]).read()
    values = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"])).reshape(matrix["shape"])
    image = sitk.GetImageFromArray(values)
    image.SetSpacing([float(step) for step in header["spacing"]])
    return image


def select_slices(files: list[str], slices: dict | None) -> list[str]:
    """The run ``first`` .. ``first + count - 1`` of the position-sorted series (an entry names one
    where the published series itself misses slices); the whole series without a range."""
    if not slices:
        return files
    first, count = int(slices["first"]), int(slices["count"])
    if first < 0 or count < 2 or first + count > len(files):
        raise BuildError(f"slice range {first}..{first + count - 1} does not fit a series of {len(files)} slices")
    return files[first:first + count]


def read_volume(source: Path, series_uid: str | None = None, slices: dict | None = None):
    """A SimpleITK image from a DICOM series folder (or a slice range of it), an InVesalius project
    or a volume file, geometry as the source wrote it."""
    import SimpleITK as sitk

    if source.is_dir():
        files = select_slices(_series_files(source, series_uid), slices)
        check_uniform_steps(files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    if source.suffix == ".inv3":
        return read_invesalius_project(source)
    return sitk.ReadImage(str(source))


def to_int16_hu(image):
    """int16 HU, padding below air clipped to -1024, geometry kept."""
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image).astype(np.float64)
    if values.ndim != 3:
        raise BuildError(f"expected a 3D scalar volume, got an array of shape {values.shape}")
    values = np.clip(np.rint(values), AIR_HU, np.iinfo(np.int16).max).astype(np.int16)
    result = sitk.GetImageFromArray(values)
    result.CopyInformation(image)
    return result


def body_crop(image, margin_voxels: int = 8) -> dict:
    """The index box around everything denser than -500 HU (the body, table included), with a
    margin: a large empty field of view then costs no disk or loading time. Recorded in the
    manifest as the entry's ``crop`` so a rebuild cuts exactly the same box."""
    import SimpleITK as sitk

    inside = np.argwhere(sitk.GetArrayViewFromImage(image) > -500)
    if inside.size == 0:
        raise BuildError("no voxel above -500 HU: not a CT volume in HU")
    size = np.array(image.GetSize())
    low = np.maximum(inside.min(axis=0)[::-1] - margin_voxels, 0)
    high = np.minimum(inside.max(axis=0)[::-1] + margin_voxels + 1, size)
    return {"index": [int(v) for v in low], "size": [int(v) for v in high - low]}


def apply_crop(image, crop: dict | None):
    """Cut the manifest's index box out of the image (physical geometry kept by SimpleITK)."""
    import SimpleITK as sitk

    if not crop:
        return image
    index, size = list(crop["index"]), list(crop["size"])
    if any(i < 0 or i + n > full for i, n, full in zip(index, size, image.GetSize())):
        raise BuildError(f"crop {crop} does not fit in an image of size {list(image.GetSize())}")
    return sitk.RegionOfInterest(image, size, index)


def convert_to_nifti(source: Path, output: Path, series_uid: str | None = None,
                     crop: dict | None = None, slices: dict | None = None) -> dict:
    """Convert one series (or its ``slices`` range) or volume file to int16 HU NIfTI at ``output``
    (written to a temporary name and renamed, so no half-written file stays), cut to ``crop`` if
    given. Returns size, spacing and noise."""
    import SimpleITK as sitk

    image = apply_crop(to_int16_hu(read_volume(Path(source), series_uid, slices)), crop)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial.nii.gz")
    sitk.WriteImage(image, str(partial), True)
    partial.replace(output)
    return describe(image)


def noise_hu(values: np.ndarray) -> float:
    """Noise in soft tissue, in HU: the MAD of the finest diagonal Haar wavelet band (Donoho-Johnstone)
    over 2x2 blocks whose four voxels all lie in -150..250 HU, pooled over up to 40 axial slices.
    Air outside the body (constant after clipping) would bias a whole-slice estimate low."""
    import pywt

    tissue = [t for t in range(values.shape[0]) if np.mean(values[t] > -500) >= 0.05]
    chosen = tissue[:: max(1, len(tissue) // 40)] or list(range(values.shape[0]))
    bands = []
    for t in chosen:
        plane = values[t, : values.shape[1] // 2 * 2, : values.shape[2] // 2 * 2].astype(np.float64)
        diagonal = pywt.dwt2(plane, "haar")[1][2]
        blocks = plane.reshape(plane.shape[0] // 2, 2, plane.shape[1] // 2, 2)
        soft = ((blocks >= -150) & (blocks <= 250)).all(axis=(1, 3))
        bands.append(diagonal[soft])
    coefficients = np.concatenate(bands) if bands else np.zeros(0)
    if coefficients.size < 100:
        return float("nan")
    return float(np.median(np.abs(coefficients)) / 0.6745)


def describe(image) -> dict:
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)
    return {"size": list(image.GetSize()), "spacing": [round(s, 4) for s in image.GetSpacing()],
            "noise_hu": round(noise_hu(values), 1)}


def verify(entry: dict, measured: dict) -> None:
    """Refuse a built volume whose size or spacing differs from its manifest entry."""
    if list(measured["size"]) != list(entry["size"]):
        raise BuildError(f"{entry['id']}: size {measured['size']} != manifest {entry['size']}")
    if np.max(np.abs(np.subtract(measured["spacing"], entry["spacing"]))) > SPACING_TOLERANCE_MM:
        raise BuildError(f"{entry['id']}: spacing {measured['spacing']} != manifest {entry['spacing']}")


# Build -----------------------------------------------------------------------------------------

def fetch_source(entry: dict, work: Path, mirror_root: Path | None, explicit: dict[str, Path],
                 allow_clone: bool, shared_data: Path | None = None) -> Path:
    """The local folder (DICOM series) or file the entry converts from."""
    source = entry["source"]
    if source["kind"] == "github":
        git_dir = find_git_dir(source["repo"], mirror_root, explicit)
        if git_dir is None:
            if not allow_clone:
                raise BuildError(f"{entry['id']}: no local git directory for {source['repo']} "
                                 f"(give --mirror-root or --repo {source['repo']}=GITDIR)")
            git_dir = clone_mirror(source["repo"], work)
        destination = work / "files" / entry["id"]
        shutil.rmtree(destination, ignore_errors=True)
        copy_tree_from_commit(git_dir, source["commit"], source["path"], destination)
        return destination / source["path"]
    if source["kind"] == "debian":
        return unpack_debian(source["package"], source["version"], work) / source["path"]
    if source["kind"] == "shared":
        if shared_data is None or not (shared_data / source["path"]).exists():
            raise BuildError(f"{entry['id']}: {source['path']} not found (give --shared-data)")
        return shared_data / source["path"]
    raise BuildError(f"{entry['id']}: unknown source kind {source['kind']!r}")


def build(manifest: dict, output: Path, work: Path, mirror_root: Path | None = None,
          explicit: dict[str, Path] | None = None, use: str = "all", only: list[str] | None = None,
          allow_clone: bool = True, shared_data: Path | None = None) -> list[dict]:
    """Build the chosen entries; a volume already in ``output`` that matches is kept."""
    import SimpleITK as sitk

    rows = []
    for entry in manifest["volumes"]:
        if (use != "all" and entry["use"] != use) or (only and entry["id"] not in only):
            continue
        target = output / entry["file"]
        row = {"id": entry["id"], "file": entry["file"], "use": entry["use"]}
        built = False
        try:
            if target.exists():
                measured = describe(sitk.ReadImage(str(target)))
                row["status"] = "kept"
            else:
                source = fetch_source(entry, work, mirror_root, explicit or {}, allow_clone, shared_data)
                if entry["source"]["kind"] == "shared":  # the project's reference file, byte for byte
                    shutil.copyfile(source, target)
                    measured = describe(sitk.ReadImage(str(target)))
                else:
                    measured = convert_to_nifti(source, target, entry["source"].get("series_uid"),
                                                entry.get("crop"), entry["source"].get("slices"))
                built, row["status"] = True, "built"
            verify(entry, measured)
        except BuildError as error:
            if built:
                target.unlink()  # a volume that does not match its entry is not left behind
            row["status"] = f"FAILED: {error}"
            rows.append(row)
            continue
        row.update(measured)
        rows.append(row)
    return rows


def print_summary(rows: list[dict]) -> None:
    thin_voxels = 0
    print(f"{'id':40s} {'use':8s} {'size':>16s} {'spacing mm':>22s} {'noise':>6s}  status")
    for row in rows:
        if "size" in row:
            size = "x".join(map(str, row["size"]))
            spacing = "x".join(f"{s:.3g}" for s in row["spacing"])
            print(f"{row['id']:40s} {row['use']:8s} {size:>16s} {spacing:>22s} {row['noise_hu']:6.1f}  {row['status']}")
            if row["use"] == "train" and "z" in fine_axes(row["spacing"]):
                thin_voxels += int(np.prod(row["size"]))
        else:
            print(f"{row['id']:40s} {row['use']:8s} {'':>16s} {'':>22s} {'':>6s}  {row['status']}")
    print(f"training volumes with a fine z axis: {thin_voxels / 1e6:.1f} M voxels")


def _repo_argument(text: str) -> tuple[str, Path]:
    if "=" not in text or "/" not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected OWNER/NAME=GITDIR, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="folder for the NIfTI volumes")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--mirror-root", type=Path, help="folder holding local git dirs per repository")
    parser.add_argument("--repo", type=_repo_argument, action="append", default=[],
                        help="OWNER/NAME=GITDIR: a local git directory for one repository")
    parser.add_argument("--shared-data", type=Path,
                        help="folder holding the project's shared volumes (entries of kind 'shared')")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--use", choices=("train", "holdout", "all"), default="all")
    parser.add_argument("--only", nargs="+", help="build only these manifest ids")
    parser.add_argument("--no-clone", action="store_true", help="never clone from GitHub")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cycleinr-data-") as scratch:
        work = args.work or Path(scratch)
        rows = build(manifest, args.output, work, args.mirror_root, dict(args.repo), args.use,
                     args.only, not args.no_clone, args.shared_data)
    print_summary(rows)
    return 1 if any(row["status"].startswith("FAILED") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
