#!/usr/bin/env bash
# The whole GPU device run of the CUDA path, from the repository root on the GPU machine:
#
#   benchmarks/gpu_run.sh PAYLOAD OUT
#
# PAYLOAD holds what the CPU machine prepared (the GPU machine reaches no registry):
#   onnxruntime_gpu-*.whl, wheels/*.whl (cp312 grpcio, grpcio-*, protobuf, googleapis-common-
#   protos), minilm/ (a `--target cuda` export: fp32 and fp16), mpnet/ (its fp16 variant alone),
#   ref-minilm.npz and ref-mpnet.npz (`python -m benchmarks.bench_gpu reference`).
# OUT receives pytest.log, gpu-mpnet.json, gpu-minilm.json, gpu-workers.json and gpu.md.
set -uo pipefail
payload=$1
out=$2
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  "$payload"/onnxruntime_gpu-*.whl "$payload"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/runtime:$PWD/export:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
CTXEMBED_CUDA_MODEL_DIR=$payload/minilm timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_cuda.py 2>&1 | tee "$out/pytest.log" | tail -15
timeout 240 python3 -m benchmarks.bench_gpu measure --model-dir "$payload/mpnet" \
  --reference "$payload/ref-mpnet.npz" --server --out "$out/gpu-mpnet.json"
timeout 120 python3 -m benchmarks.bench_gpu measure --model-dir "$payload/minilm" \
  --reference "$payload/ref-minilm.npz" --out "$out/gpu-minilm.json"
timeout 150 python3 -m benchmarks.bench_gpu workers --model-dir "$payload/mpnet" --counts 1,2,4 \
  --out "$out/gpu-workers.json"
python3 -m benchmarks.bench_gpu report "$out/gpu-mpnet.json" "$out/gpu-minilm.json" \
  "$out/gpu-workers.json" > "$out/gpu.md"
cat "$out/gpu.md"
