#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine without network (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh pack        # here, once: the published frame, config and default checkpoint,
#                                            # compressed into .gpu/ (ignored by git; ~36 MB), to carry along
#   bash benchmarks/gpu_check.sh run [ARGS]  # there: unpack into a fresh cache, build gixdrt (no network: the
#                                            # machine's PyTorch, CuPy, Numba-CUDA, onnxruntime, scikit-build-core),
#                                            # run benchmarks/gpu_check.py ARGS; results to $OUT (else
#                                            # benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  pack)
    src=$(python3 -c "from gixdrt.io import fetch_published; print(fetch_published(quiet=True).root)")
    mkdir -p .gpu/assets
    for f in S123_MABr_A2_00865-00000.tif test_config.yaml save_only_largest_2.h5; do
      gzip -c -6 "$src/$f" > ".gpu/assets/$f.gz"
    done
    du -sh .gpu
    ;;
  run)
    shift || true
    export GIXDRT_CACHE=/tmp/gixdrt-gpu-cache GIXDRT_OFFLINE=1 PYTHONUNBUFFERED=1
    mkdir -p "$GIXDRT_CACHE/gixi-0.0.1"
    for f in .gpu/assets/*.gz; do gunzip -c "$f" > "$GIXDRT_CACHE/gixi-0.0.1/$(basename "${f%.gz}")"; done
    t0=$(date +%s)
    python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 2>&1 | tail -3
    echo "gixdrt built in $(( $(date +%s) - t0 )) s"
    python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}" "$@"
    ;;
  *) echo "usage: $0 pack|run [gpu_check.py arguments]" >&2; exit 2 ;;
esac
