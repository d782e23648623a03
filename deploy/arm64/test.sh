#!/bin/sh
# make test-arm64: the runtime on arm64, emulated (qemu-user-static), against a model folder
# exported on x86. Proves function, never speed (emulation is 20-100x slower).
#   deploy/arm64/test.sh [MODEL_DIR]
# 1. the runtime's own tests that need no export and no torch (the transport against the fake
#    model, settings and flags, pooling and windows, CPU budget, faults, the fused kernels bit
#    for bit against their functions' bodies), in an arm64 root where only the runtime (and onnx,
#    for the kernels' test graphs) is installed, from aarch64 wheels;
# 2. deploy/arm64/vectors.py: the folder's fp32 and int8 vectors there against x86's and PyTorch's.
# Needs root (chroot), debootstrap and qemu-user-static; makes the root once (rootfs.sh).
set -eu
MODEL_DIR=${1:-models/all-MiniLM-L6-v2}
ROOT=${ROOT:-.cache/rootfs-bookworm-arm64}
PY=${PY:-.venv/bin/python}
TESTS="tests/test_transport.py tests/test_faults.py tests/test_cli_flags.py tests/test_cpu.py
       tests/test_pooling_windows.py tests/test_metrics.py tests/test_open_inference.py
       tests/test_kernels.py"
[ -d "$ROOT" ] || deploy/arm64/rootfs.sh "$ROOT"

# ours, with the fused kernels cross-compiled where gcc-aarch64-linux-gnu is installed
# (deploy/arm64/wheel.sh), and aarch64 wheels of what it needs (the platform tags onnxruntime and
# numpy publish); onnx only for the kernels' tests, which build small graphs
KERNELS=$(PY=$PY deploy/arm64/wheel.sh | tail -1)
EXPECT=""
[ "$KERNELS" = kernels ] && EXPECT="--expect-kernels"
$PY -m pip download -q -d .cache/wheels-arm64 --only-binary=:all: --python-version 311 \
    --implementation cp --abi cp311 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --platform linux_aarch64 -c constraints.txt \
    dist/ctxembed-*.whl uvloop pytest onnx

WORK="$ROOT/work"
rm -rf "$WORK" && mkdir -p "$WORK/src" "$WORK/wheels"
# this checkout's files (tracked, and new ones not ignored)
git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$WORK/src"
cp .cache/wheels-arm64/*.whl "$WORK/wheels/" && cp dist/ctxembed-*.whl "$WORK/wheels/"
cp -r "$MODEL_DIR" "$WORK/model"
$PY deploy/arm64/vectors.py reference --model-dir "$MODEL_DIR" --out "$WORK/reference.npz"

# /proc for the CPU budget. Not /sys: onnxruntime's cpuinfo then reads the x86 host's CPU
# lists and crashes under emulation; without them it warns ("Error in cpuinfo") and runs.
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
# A clean environment: the host's pip settings (PIP_FIND_LINKS...) mean nothing in there.
CHROOT="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot $ROOT"
$CHROOT sh -c "rm -rf /opt/ctxembed && python3 -m venv /opt/ctxembed \
    && /opt/ctxembed/bin/pip install -q --no-index --find-links /work/wheels ctxembed uvloop pytest \
    && /opt/ctxembed/bin/pip install -q --no-index --find-links /work/wheels onnx"
$CHROOT sh -c "cd /work/src && /opt/ctxembed/bin/python -c \
    'import importlib.util as u; assert u.find_spec(\"torch\") is None, \"torch in the runtime\"'"
$CHROOT sh -c "cd /work/src && /opt/ctxembed/bin/python -m pytest -q -p no:cacheprovider \
    -m 'not model and not slow' $(echo $TESTS)"
$CHROOT sh -c "cd /work/src && /opt/ctxembed/bin/python deploy/arm64/vectors.py check \
    --model-dir /work/model --reference /work/reference.npz $EXPECT" > .cache/arm64-vectors.json \
    || { cat .cache/arm64-vectors.json; echo "test-arm64: vectors differ"; exit 1; }
cat .cache/arm64-vectors.json
echo "test-arm64: passed"
