#!/bin/sh
# Which int8 schemes run correctly on arm64: every scheme of the export, built here from one fp32
# export of the default model, checked in the emulated arm64 root that `make test-arm64` set up
# (deploy/arm64/vectors.py: offsets, fp32 against x86, int8 against PyTorch and x86's int8).
#   deploy/arm64/schemes.sh      (after make test-arm64; root, like it)
# Writes benchmarks/results/arm64-schemes.md. Function only: emulation says nothing of speed.
set -eu
ROOT=${ROOT:-.cache/rootfs-bookworm-arm64}
PY=${PY:-.venv/bin/python}
SCHEMES=${SCHEMES:-"dynamic calibrated smooth smooth-blockwise-ffn outlier blockwise"}
[ -x "$ROOT/opt/ctxembed/bin/python" ] || { echo "run make test-arm64 first"; exit 1; }
cp deploy/arm64/vectors.py "$ROOT/work/src/deploy/arm64/vectors.py"  # this checkout's
OUT=benchmarks/results/arm64-schemes.md
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
CHROOT="env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot $ROOT"
{
    echo "# int8 schemes on arm64 (emulated), $(date -u '+%Y-%m-%d %H:%M')"
    echo
    echo "all-MiniLM-L6-v2, each scheme built on $(uname -m) from one fp32 export; checked by"
    echo "deploy/arm64/vectors.py in an arm64 Debian 12 root under qemu-user-static."
    echo
    echo "| scheme | arm64 int8 vs PyTorch mean / worst | x86 int8 vs PyTorch mean / worst | arm64 vs x86 int8, worst word | fused kernels on arm64 |"
    echo "|---|---|---|---|---|"
} > "$OUT"
for scheme in $SCHEMES; do
    folder=$($PY -c "
import sys; sys.argv = ['x']
from benchmarks.bench_int8 import fp32_export, scheme_folder, source_folder
print(scheme_folder(fp32_export('minilm', source_folder('minilm')), '$scheme'))" | tail -1)
    rm -rf "$ROOT/work/scheme" && cp -r "$folder" "$ROOT/work/scheme"
    $PY deploy/arm64/vectors.py reference --model-dir "$folder" --out "$ROOT/work/scheme.npz"
    $CHROOT sh -c "cd /work/src && /opt/ctxembed/bin/python deploy/arm64/vectors.py check \
        --model-dir /work/scheme --reference /work/scheme.npz --no-fp32" \
        > ".cache/arm64-$scheme.json" || true  # "passed" is the export thresholds: reported below
    $PY -c "
import json; f = json.load(open('.cache/arm64-$scheme.json'))
print(f\"| $scheme | {f['int8_vs_pytorch_mean']:.4f} / {f['int8_vs_pytorch_min']:.4f} | {f['x86_int8_vs_pytorch_mean']:.4f} / {f['x86_int8_vs_pytorch_min']:.4f} | {f['int8_vs_x86_int8_min']:.4f} | {f.get('fused_kernels') or 'none'} |\")
" >> "$OUT"
    tail -1 "$OUT"
done
