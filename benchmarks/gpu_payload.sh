#!/usr/bin/env bash
# Builds what benchmarks/gpu_run.sh needs on a GPU machine that reaches no registry, split into
# parts that each fit one device transfer (64 MiB with the working tree).
#
#   benchmarks/gpu_payload.sh [WORK]      (default .gpu, git-ignored through .git/info/exclude)
#
# Writes WORK/chunkNN. On the GPU machine, after the parts have been copied one per call into
# /tmp/g:  cd /tmp/g && cat chunk* | tar x && benchmarks/gpu_run.sh /tmp/g/payload OUT
# (from the repository root). Needs `make venv` (export extra) and `make mpnet` once.
set -euo pipefail
work=${1:-.gpu}
bin=.venv/bin
ort_gpu=${ORT_GPU_VERSION:-1.31.1}
if [[ $work != /* ]]; then  # inside the checkout: keep it out of git (and of `git status`)
  grep -qx "/${work#./}/" .git/info/exclude 2>/dev/null || echo "/${work#./}/" >> .git/info/exclude
fi
build=$work/build
rm -rf "$build" "$work"/chunk*
mkdir -p "$build/payload/minilm" "$build/payload/mpnet" "$build/payload/wheels"

"$bin/ctxembed" export --target cuda --out "$build/minilm-cuda"
mpnet_source=$("$bin/python" -m testkit.mpnet | tail -1)
"$bin/ctxembed" export --target cuda --model "$mpnet_source" --out "$build/mpnet-cuda"
minilm_source=$("$bin/python" -c \
  "from ctxembed.export.source import embedded_model_dir; print(embedded_model_dir())")
"$bin/python" -m benchmarks.bench_gpu reference --source "$minilm_source" \
  --model-dir "$build/minilm-cuda" --out "$build/payload/ref-minilm.npz"
"$bin/python" -m benchmarks.bench_gpu reference --source "$mpnet_source" \
  --model-dir "$build/mpnet-cuda" --out "$build/payload/ref-mpnet.npz"

# MiniLM whole (the CUDA test compares fp16 on CUDA with fp32 on the CPU); MPNet's fp16 alone,
# its manifest trimmed to match (a folder refuses to load with a variant's file missing).
cp "$build"/minilm-cuda/{manifest.json,tokenizer.json,config.json,model.onnx,model_fp16.onnx} \
  "$build/payload/minilm/"
cp "$build"/mpnet-cuda/{tokenizer.json,config.json,model_fp16.onnx} "$build/payload/mpnet/"
"$bin/python" - "$build/mpnet-cuda/manifest.json" "$build/payload/mpnet/manifest.json" <<'EOF'
import json, sys
manifest = json.load(open(sys.argv[1]))
manifest["variants"] = [v for v in manifest["variants"] if v["name"] == "fp16"]
json.dump(manifest, open(sys.argv[2], "w"), indent=1)
EOF

# The GPU machine runs Python 3.12: its onnxruntime-gpu (CUDA 13 build) and the gRPC wheels
# at the versions this project pins (its own protobuf is older than our generated code needs).
download() {
  "$bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
download "$build/payload" "onnxruntime-gpu==$ort_gpu"
pins=$(grep -E '^(grpcio|grpcio-health-checking|grpcio-reflection|grpcio-status|protobuf|googleapis-common-protos)==' constraints.txt)
# shellcheck disable=SC2086
download "$build/payload/wheels" $pins

tar -C "$build" -cf "$build/payload.tar" payload
split -b 64000000 -d -a 2 "$build/payload.tar" "$work/chunk"
rm -rf "$build"
ls -l "$work"/chunk*
