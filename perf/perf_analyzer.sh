#!/usr/bin/env bash
# Triton's perf_analyzer, streaming, against the CPU model (a running Triton, gRPC).
# perf_analyzer ships in the tritonclient 2.45 manylinux wheel; it needs Debian's
# libb64-0d and libcudart.so.12 (nvidia-cuda-runtime-cu12), installed here into
# perf/.cache/pa (a virtual environment of its own).
#   usage: perf/perf_analyzer.sh [grpc-url] [concurrency-range]
#   e.g.   perf/perf_analyzer.sh 127.0.0.1:8001 1:8:1
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${1:-127.0.0.1:8001}
RANGE=${2:-1:8:1}
PA=perf/.cache/pa
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null
  else echo "perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2; exit 1; fi
fi
if [ ! -x "$PA/bin/perf_analyzer" ]; then
  python3 -m venv "$PA"
  "$PA/bin/pip" install -q --disable-pip-version-check tritonclient==2.45.0 nvidia-cuda-runtime-cu12==12.9.79
fi
cudart=$("$PA/bin/python" -c "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))")
.venv/bin/python -m perf.perf_analyzer_input > "$PA/input.json"
LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA/bin/perf_analyzer" \
  -m electron_cpu -i grpc -u "$URL" --streaming --async \
  --input-data "$PA/input.json" --shape input_ids:632 \
  --concurrency-range "$RANGE" --measurement-mode count_windows --measurement-request-count 8 \
  --stability-percentage 50 --max-trials 6
