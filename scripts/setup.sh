#!/usr/bin/env bash
# Set up hintdistill in ./.venv: PyTorch, the package with its dependencies, and the local data the
# demo and tests read (Debian's dataset-fashion-mnist). Safe to run again; it skips what is there.
#   bash scripts/setup.sh            # library, CLI, test tools, timm + ONNX export extras, Fashion-MNIST
#   bash scripts/setup.sh --browser  # also Chromium, for the HTML report's browser test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

apt_install() {  # apt_install PACKAGE... (as root, or through sudo when it is available)
  local SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! command -v apt-get >/dev/null; then
    echo "setup: apt-get not found; install $* with your system's package manager" >&2; return 0
  fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # the CUDA build of the pair takes about 5.5 GB in the venv (more while downloaded wheels unpack)
  for d in . "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$d" | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt 6 ]; then
      echo "setup: only ${free_gb} GB free on $(df -P "$d" | awk 'NR == 2 {print $6}') ($d); PyTorch needs about 6 GB." \
           "Free some space (or point TMPDIR at a larger disk) and run this again." >&2
      exit 1
    fi
  done
  # torch 2.14.1 / torchvision 0.29.1 are a matched pair (other torchvision builds fail to import with it).
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
# timm and export are optional extras the tests use; pinning the installed torch/torchvision keeps pip
# from replacing the matched pair while it resolves timm's and onnxscript's requirements.
# (the public version only: pip's resolver refuses a pin with the local "+cu130" part, ResolutionImpossible)
PINS=$(.venv/bin/python -c 'import torch, torchvision; v = lambda m: m.__version__.split("+")[0]; print(f"torch=={v(torch)} torchvision=={v(torchvision)}")')
# shellcheck disable=SC2086  # two words on purpose
.venv/bin/pip install -q -e ".[dev,timm,export]" $PINS

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -z "${HINTDISTILL_DATA:-}" ]; then
  apt_install dataset-fashion-mnist || echo "setup: could not install dataset-fashion-mnist; set HINTDISTILL_DATA" >&2
fi
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
  apt_install chromium || echo "setup: could not install chromium; the report's browser test will be skipped" >&2
fi
echo "setup: done (.venv ready)"
