#!/usr/bin/env bash
# Create .venv in the repository and install nnunet-ext with everything it needs (CPU machine friendly).
# torch and torchvision are pinned first: nnU-Net's trainer lookup imports timm -> torchvision, which must
# match torch (see shared notes); 2.14.1 / 0.29.1 import together and run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -c "import torch, torchvision, nnunetv2, nnunet_ext; print('nnunet-ext', nnunet_ext.__version__, '| torch', torch.__version__, '| nnunetv2 ok')"
