#!/usr/bin/env bash
# Build .gpu/ (git-ignored), what `benchmarks/gpu_check.sh` needs on the GPU machine beside the tree:
# .gpu/wheels/ (the wheels that machine lacks) and .gpu/data/ (the dev photos, which live outside
# the repository in ../shared/data/ and so do not travel with the tree).
#
#   bash benchmarks/gpu_carry.sh         # then: device run with carry [".gpu"] (docs/gpu.md)
#
# The GPU machine has Python 3.12 with torch 2.11, torchvision 0.26, timm, numpy, pillow, pyyaml,
# safetensors, scikit-learn, matplotlib and pytest, and no network. The project's code outside
# flows/ (the only package that imports Prefect) also needs pydantic and webdataset; timm is carried
# too, so the GPU runs the timm version tested here. Versions are those of the Python in PYTHON
# (default: .venv/bin/python, the project's environment). Only binary wheels for CPython 3.12 on
# manylinux x86_64 are fetched (no dependency resolution: every needed one is named, and the
# check at the end reads each wheel's Requires-Dist and fails if one is neither here nor on the
# GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.gpu/wheels}
PHOTOS=../shared/data/cifar10-dev-2796.npz
NAMES="pydantic pydantic-core annotated-types typing-inspection typing-extensions webdataset braceexpand timm"
PINS=$("$PY" - $NAMES <<'PYEOF'
import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))
PYEOF
)
rm -rf "$DEST" && mkdir -p "$DEST"
if [ "$DEST" = .gpu/wheels ]; then
  if [ -f "$PHOTOS" ]; then
    mkdir -p .gpu/data && cp "$PHOTOS" .gpu/data/
  else
    echo "note: $PHOTOS not found; the GPU check will skip its photo parts" >&2
  fi
fi
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" $PINS
"$PY" - "$DEST" "$PYVER" <<'PYEOF'
"""Every Requires-Dist of every wheel (markers evaluated for the GPU machine) must be satisfied."""
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement

dest, pyver = Path(sys.argv[1]), sys.argv[2]
# Preinstalled there (docs/gpu.md; .library KINDS.md), checked by name only.
ON_GPU_MACHINE = {"torch", "torchvision", "numpy", "pillow", "pyyaml", "safetensors", "huggingface-hub",
                  "tqdm", "scikit-learn", "matplotlib", "pytest", "packaging", "filelock", "fsspec"}
env = {"python_version": pyver, "python_full_version": f"{pyver}.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
wheels = sorted(dest.glob("*.whl"))
have = {norm(w.name.split("-")[0]): w for w in wheels}
missing = []
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = norm(req.name)
            if name in have:
                version = have[name].name.split("-")[1]
                if not req.specifier.contains(version, prereleases=True):
                    missing.append(f"{w.name} needs {req}, carried {version}")
            elif name not in ON_GPU_MACHINE:
                missing.append(f"{w.name} needs {req}: neither carried nor on the GPU machine")
size = sum(w.stat().st_size for w in wheels) / 2**20
print(f"{dest}: {len(wheels)} wheels, {size:.1f} MiB: " + ", ".join(w.name for w in wheels))
if missing:
    sys.exit("error: incomplete wheel set:\n  " + "\n  ".join(missing))
if size > 40:  # the tree, .gpu/data (8 MiB of photos) and the wheels travel: 64 MiB in all
    sys.exit(f"error: {dest} is {size:.1f} MiB; the tree that travels must stay under 64 MiB")
PYEOF
