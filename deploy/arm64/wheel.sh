#!/bin/sh
# ctxembed's arm64 wheel into dist/ (make test-arm64, make image-arm64):
#   deploy/arm64/wheel.sh        prints "kernels" or "pure" on its last line
# With Debian's cross compiler (apt-get install gcc-aarch64-linux-gnu) the build hook compiles the
# fused kernels for arm64 (their portable C form; a py3-none-linux_aarch64 wheel). Without it
# the wheel is pure Python and arm64 runs the graphs' standard operators: same vectors, slower.
set -eu
PY=${PY:-.venv/bin/python}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
rm -rf dist
if command -v "$CROSS_CC" >/dev/null 2>&1; then
    CC=$CROSS_CC $PY -m pip wheel -q --no-deps . -w dist
    # the hook warns and falls back to a pure wheel when the compiler fails: not here
    ls dist/ctxembed-*-py3-none-linux_aarch64.whl >/dev/null 2>&1 \
        || { echo "arm64 wheel: $CROSS_CC did not build the fused kernels" >&2; exit 1; }
    echo kernels
else
    echo "arm64 wheel: no $CROSS_CC (apt-get install gcc-aarch64-linux-gnu): pure Python," \
        "the fused kernels left out" >&2
    CTXEMBED_BUILD_KERNELS=0 $PY -m pip wheel -q --no-deps . -w dist
    echo pure
fi
