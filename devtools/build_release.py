"""Build a release artifact of the sample shop (devtools/sample_app).

Release N is ``common/`` with the overlays ``release1/``, ``release2/`` ...
``release<N>/`` laid over it in that order (a later overlay's file replaces an
earlier one's), plus a ``RELEASE`` file holding the version. So an overlay only
carries what its release changes or adds: its models, views, new migrations.
The tarball has no wrapping directory: its top level is manage.py, RELEASE,
requirements.txt, shopsite/, shop/ — what the role unpacks into
``releases/<version>/``.

The output is reproducible (sorted members, fixed mtimes/owners, gzip without
a timestamp): building the same sources twice gives the same bytes, so the
sandbox can rebuild on every ``up`` and only replace an artifact that changed.

    python devtools/build_release.py --release 2 --version 2.0.0 --out shop-2.0.0.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

SAMPLE_APP = Path(__file__).resolve().parent / "sample_app"
# 1980-01-01, as wheels use: old enough to be obviously synthetic, valid for zip/pyc tools
FIXED_MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")


def releases() -> list[int]:
    return sorted(int(p.name[len("release"):]) for p in SAMPLE_APP.glob("release[0-9]*") if p.is_dir())


def layers(release: int) -> list[Path]:
    """common/, then every overlay up to and including release<N>/, in release order."""
    overlay = SAMPLE_APP / f"release{release}"
    if not overlay.is_dir():
        raise SystemExit(f"no such release {release}: expected {overlay} (known: {releases()})")
    return [SAMPLE_APP / "common", *(SAMPLE_APP / f"release{n}" for n in releases() if n <= release)]


def collect(release: int) -> dict[str, Path]:
    """Relative path in the artifact → source file, a later layer winning over an earlier one."""
    files: dict[str, Path] = {}
    for layer in layers(release):
        for dirpath, dirnames, filenames in os.walk(layer):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
            for name in filenames:
                if name.endswith(SKIP_SUFFIXES):
                    continue
                source = Path(dirpath) / name
                files[source.relative_to(layer).as_posix()] = source
    if "RELEASE" in files:
        raise SystemExit("sources must not contain a RELEASE file: the version comes from --version")
    return files


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version) or version in {".", ".."}:
        raise SystemExit(
            f"--version {version!r} is not usable as a directory name: use letters, digits, '.', '_', '+', '-'"
        )
    return version


def _member(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.type = kind
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_bytes(release: int, version: str) -> bytes:
    check_version(version)
    files = collect(release)
    files_and_data: dict[str, tuple[bytes, int]] = {}
    for rel, source in files.items():
        executable = os.access(source, os.X_OK)
        files_and_data[rel] = (source.read_bytes(), 0o755 if executable else 0o644)
    files_and_data["RELEASE"] = (f"{version}\n".encode(), 0o644)
    directories = sorted({str(Path(rel).parent) for rel in files_and_data} - {"."})
    # add parents of nested directories too
    for directory in list(directories):
        parent = Path(directory).parent
        while str(parent) != ".":
            directories.append(str(parent))
            parent = parent.parent
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(set(directories)):
            tar.addfile(_member(directory, 0, 0o755, tarfile.DIRTYPE))
        for rel in sorted(files_and_data):
            data, mode = files_and_data[rel]
            tar.addfile(_member(rel, len(data), mode), io.BytesIO(data))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()


def build(release: int, version: str, out: Path) -> bool:
    """Write the artifact to ``out``; return False when an identical file was already there."""
    data = build_bytes(release, version)
    out = Path(out)
    if out.exists() and out.read_bytes() == data:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=int, required=True, help=f"overlay number, one of {releases()}")
    parser.add_argument("--version", required=True, help="version string written to RELEASE, e.g. 2.0.0")
    parser.add_argument("--out", type=Path, required=True, help="path of the .tar.gz to write")
    args = parser.parse_args(argv)
    changed = build(args.release, args.version, args.out)
    print(f"{args.out}: release {args.release} version {args.version} ({'written' if changed else 'unchanged'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
