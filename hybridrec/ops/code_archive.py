"""The code zip for ``--py-files``: ``hybridrec-code.zip``, written by ``hybridrec pack``.

It holds the packages ``hybridrec`` (with its non-Python package data, such as
``hybridrec/conf/*.yaml``, which setup.py's ``package_dir`` maps from ``conf/``), ``udfs``, ``jobs``
and ``pipelines``; no tests, no ``__pycache__``. Entries are sorted and carry a fixed timestamp and
mode, so the same code gives the same bytes (and an unchanged file is not rewritten).

The pack's other modules stand on this one, so it also holds what they all share: the pack's
error, :class:`PackError`, and the atomic write and the size in log lines.
"""

from __future__ import annotations

import ast
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

# The pack's one log, whichever module writes: its lines name one logger, and
# ``--print-flags`` quiets them all at once (packaging.main).
log = logging.getLogger("hybridrec.ops.packaging")

REPO_ROOT = Path(__file__).resolve().parents[2]

CODE_ARCHIVE = "hybridrec-code.zip"

# Top-level packages shipped with --py-files.
CODE_PACKAGES = ("hybridrec", "udfs", "jobs", "pipelines")
# Never shipped in the code zip: directory names and file suffixes.
_SKIP_DIRS = {"__pycache__", "tests", "test"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
# ZIP's earliest representable time; a fixed time makes the archive reproducible.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackError(Exception):
    """Building or checking the executor environment failed; the message says why."""


def package_dirs(root: Path = REPO_ROOT) -> dict[str, str]:
    """setup.py's ``package_dir`` (package -> folder), e.g. ``hybridrec.conf`` -> ``conf``: such a
    package is shipped where an install puts it (``hybridrec/conf/``), read from its folder."""
    setup_py = root / "setup.py"
    if not setup_py.is_file():
        return {}
    for node in ast.walk(ast.parse(setup_py.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            try:
                mapping = ast.literal_eval(node.value)
            except ValueError as exc:
                raise PackError(f"{setup_py}: package_dir is not a literal dict") from exc
            return {str(k): str(v) for k, v in mapping.items() if k}
    return {}


def code_files(root: Path = REPO_ROOT, packages: Sequence[str] = CODE_PACKAGES) -> dict[str, str]:
    """The code zip's entries: archive name -> source file (both POSIX, relative to ``root``),
    sorted by name. Every file under the packages, Python or not (package data such as
    ``hybridrec/conf/*.yaml``, from the folder setup.py's ``package_dir`` names), less caches,
    tests, hidden files and egg-info."""
    trees = [(package, package) for package in packages]
    for package, folder in sorted(package_dirs(root).items()):
        if package.split(".")[0] in packages:
            trees.append((package.replace(".", "/"), folder))
    found: dict[str, str] = {}
    for arc_top, source_top in trees:
        top = root / source_top
        if arc_top in packages and not (top / "__init__.py").is_file():
            raise PackError(f"{top} is not a Python package (no __init__.py)")
        if not top.is_dir():
            raise PackError(f"{top} (package_dir of {arc_top}) is not a folder")
        for folder, dirs, files in os.walk(top):
            dirs[:] = [
                d
                for d in dirs
                if d not in _SKIP_DIRS and not d.startswith(".") and not d.endswith(_SKIP_SUFFIXES)
            ]
            for name in files:
                path = Path(folder, name)
                if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                    continue
                if name.startswith("test_") and name.endswith(".py"):
                    continue
                if path.is_symlink() or not path.is_file():
                    continue
                inside = path.relative_to(top).as_posix()
                found[f"{arc_top}/{inside}"] = path.relative_to(root).as_posix()
    return dict(sorted(found.items()))


def code_archive_bytes(root: Path = REPO_ROOT, packages: Sequence[str] = CODE_PACKAGES) -> bytes:
    """The code zip, reproducibly: sorted entries, fixed time, mode and compression."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, source in code_files(root, packages).items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode below is read
            info.external_attr = 0o100644 << 16
            archive.writestr(info, (root / source).read_bytes(), compresslevel=9)
    return buffer.getvalue()


def build_code_archive(out_dir: Path, root: Path = REPO_ROOT) -> Path:
    """Write ``hybridrec-code.zip`` into ``out_dir``; an unchanged archive is left as it is."""
    target = Path(out_dir) / CODE_ARCHIVE
    data = code_archive_bytes(root)
    if target.is_file() and target.read_bytes() == data:
        log.info("code archive %s unchanged (%s)", target, format_size(len(data)))
        return target
    write_atomic(target, data)
    count = len(zipfile.ZipFile(io.BytesIO(data)).namelist())
    log.info("code archive %s written: %d files, %s", target, count, format_size(len(data)))
    return target


def write_atomic(target: Path, data: bytes) -> None:
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def format_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
