"""Uploads kept under the runs folder: recordings, labels and mappings a sweep reads, and imported paper folders.

Why: uploads live in Gradio's temporary cache, which is cleaned, while a sweep must stay resumable
for weeks. Uploaded files are copied to `<runs>/_uploads/<content hash>/` and paper-layout imports
to `<runs>/_imports/<name>-<content hash>/`. The same upload therefore lands in the same folder,
hence gives the same sweep id, so uploading it again resumes the sweep. Those folders start with
"_", which no sweep id does, so list_sweeps never mistakes them for sweeps.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from evaluation.export import PROMPT_NAMES_FILE, import_paper_folder
from evaluation.reference import FILE_PATTERN
from evaluation.sweep.provenance import PROVENANCE_FILE, read_runs

UPLOADS_DIR = "_uploads"
IMPORTS_DIR = "_imports"
IMPORT_PREFIX = "import:"  # the key of an imported folder, beside sweep ids in every chooser
MAPPING_SUFFIX = "_vernacular_scientific_mapping.jsonl"


class UploadError(ValueError):
    """Uploaded files that cannot be kept or imported; the message says which and why."""


def persist_uploads(paths: Sequence[str], root: Path, rename: dict[str, str] | None = None, prefix: str = "") -> Path:
    """Copy uploaded files into `root/<prefix><hash of names and contents>/` (once) and return that folder."""
    named = [(Path(path), (rename or {}).get(path, Path(path).name)) for path in paths]
    names = [name for _, name in named]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise UploadError(f"two uploaded files share the name(s) {clashes}; rename one of each")
    digest = hashlib.sha256()
    for path, name in sorted(named, key=lambda pair: pair[1]):
        digest.update(name.encode() + b"\0" + _file_digest(path) + b"\0")
    folder = root / f"{prefix}{digest.hexdigest()[:16]}"
    if not folder.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        for path, name in named:
            shutil.copyfile(path, partial / name)
        try:
            partial.rename(folder)
        except OSError:  # another request copied the same upload first
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def persist_mapping(upload: str, runs_dir: str | Path) -> str:
    """A label-mapping upload kept under the runs folder, so the sweep that reads it can resume later."""
    return str(persist_uploads([upload], Path(runs_dir) / UPLOADS_DIR) / Path(upload).name)


def slug(text: str) -> str:
    """A folder-safe name ('My Garden!' -> 'my-garden') for a data set or an import."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")[:40].strip("-")
    if not cleaned:
        raise UploadError("give the data set a name (letters or digits)")
    return cleaned


def import_paper_uploads(paths: Sequence[str], runs_dir: str | Path, name: str = "imported") -> str:
    """Keep uploaded paper-layout files (jsonl files, or zips of them) under the runs folder; return the view key.

    Files other than results, prompt_names.json, label mappings and provenance.jsonl (an exported sweep's run
    records) are ignored; zip members are taken by their base names only, so an archive cannot write outside
    the import folder.
    """
    if not paths:
        raise UploadError("upload the beans_zero_eval_*.jsonl files (or a zip of them) first")
    staging = Path(tempfile.mkdtemp(prefix="naturelm-import-"))
    try:
        for path in map(Path, paths):
            if path.suffix.lower() == ".zip":
                _extract_flat(path, staging)
            elif _wanted(path.name):
                shutil.copyfile(path, staging / path.name)
        if not any(FILE_PATTERN.match(p.name) for p in staging.iterdir()):
            raise UploadError("none of the uploads is named beans_zero_eval_{dataset}_query{q}_lora{NNN}.jsonl")
        import_paper_folder(staging)  # a malformed file fails here, before it is kept
        read_runs(staging)  # and so does a torn-in-the-middle provenance.jsonl
        kept = sorted(str(p) for p in staging.iterdir())
        folder = persist_uploads(kept, Path(runs_dir) / IMPORTS_DIR, prefix=f"{slug(name)}-")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return IMPORT_PREFIX + folder.name


def imported_folders(runs_dir: str | Path) -> list[str]:
    """The names of the imported folders, newest name first (hidden partial copies left out)."""
    imports = Path(runs_dir) / IMPORTS_DIR
    if not imports.is_dir():
        return []
    return sorted((p.name for p in imports.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _wanted(name: str) -> bool:
    return (
        bool(FILE_PATTERN.match(name)) or name in (PROMPT_NAMES_FILE, PROVENANCE_FILE) or name.endswith(MAPPING_SUFFIX)
    )


def _extract_flat(archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                name = Path(member.filename).name
                if not member.is_dir() and _wanted(name):
                    (folder / name).write_bytes(bundle.read(member))
    except zipfile.BadZipFile as error:
        raise UploadError(f"{archive.name} is not a readable zip file: {error}") from None
