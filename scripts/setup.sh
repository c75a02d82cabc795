#!/usr/bin/env bash
# Create .venv in the repository and install nnunet-ext with everything it needs (CPU machine friendly).
# torch and torchvision are pinned first: nnU-Net's trainer lookup imports timm -> torchvision, which must
# match torch (see shared notes); 2.14.1 / 0.29.1 import together and run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch's CUDA build alone takes ~5.5 GB in the venv; say so before pip fails half-way with "No space left".
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  free_kib=$(df --output=avail -k . | tail -1)
  if [ "$free_kib" -lt $((7 * 1024 * 1024)) ]; then
    echo "setup.sh: only $((free_kib / 1024)) MiB free on $(df --output=target . | tail -1); the install needs about" \
         "7 GiB (torch ~5.5 GB). Free some space (old clones, caches) and run it again." >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import torch, torchvision, nnunetv2, nnunet_ext; print('nnunet-ext', nnunet_ext.__version__, '| torch', torch.__version__, '| nnunetv2 ok')"
