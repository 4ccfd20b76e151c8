#!/usr/bin/env bash
# Pack what a GPU device machine lacks (it reaches no package registry; it has Python 3.12 with
# torch, torchvision, timm, numpy, pandas, scipy, pyarrow, tensorboard and pytest) into one
# file to carry there: Ray, Optuna, tensorboardX, mnist1d, mlxtend and the dependencies the
# device lacks, as cp312 manylinux wheels unzipped into one folder.
#
#   bash bench/device_bundle.sh            # writes .devsite/site.tar.xz (git-ignored, 79 MB)
#   LEAN=1 bash bench/device_bundle.sh     # without what the GPU benches do not use
#   # on the device:  mkdir -p /tmp/site && tar -xJf .devsite/site.tar.xz -C /tmp/site
#   #                 PYTHONPATH=/tmp/site:. python bench/gpu_throughput.py
#
# Measured December 2026: 79 MB in full (mlxtend brings scikit-learn and matplotlib), over the
# 64 MiB a device call carries; LEAN=1 leaves those out.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devsite
py=.venv/bin/python; [ -x "$py" ] || py=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ray_version=$("$py" -c "import ray; print(ray.__version__)" 2>/dev/null || echo 2.60.0)
optuna_version=$("$py" -c "import optuna; print(optuna.__version__)" 2>/dev/null || echo 5.0.0)
"$py" -m pip download --quiet --dest "$work/wheels" --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  "ray[default,tune,train]==$ray_version" "optuna==$optuna_version" tensorboardX mnist1d mlxtend
mkdir -p "$work/site"
for wheel in "$work"/wheels/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
  # What the device already has stays the device's (its torch is built for its GPU).
  case "$name" in
    torch|torchvision|triton|nvidia_*|numpy|pandas|scipy|pyarrow|tensorboard|timm|pytest) continue ;;
  esac
  # LEAN=1: what the GPU benches do not use (digits and mnist5k, the report's figures, py-spy;
  # pillow comes with the device's torchvision), to fit the 64 MiB a device call carries.
  if [ "${LEAN:-0}" = 1 ]; then
    case "$name" in
      scikit_learn|mlxtend|matplotlib|fonttools|kiwisolver|contourpy|py_spy|virtualenv|pillow) continue ;;
    esac
  fi
  "$py" -m zipfile -e "$wheel" "$work/site"
done
# python -m zipfile drops the executable bits: Ray's own servers need theirs back.
chmod +x "$work"/site/ray/core/src/ray/gcs/gcs_server "$work"/site/ray/core/src/ray/raylet/raylet
rm -rf "$work"/site/ray/jars "$work"/site/ray/rllib "$work"/site/ray/serve "$work"/site/ray/llm
find "$work/site/ray/dashboard" -name '*.map' -delete
mkdir -p "$out"
tar -C "$work/site" -cf - . | xz -T0 -6 > "$out/site.tar.xz"
ls -lh "$out/site.tar.xz"
