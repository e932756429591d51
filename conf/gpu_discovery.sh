#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs nvidia-smi sees as Spark's resource JSON,
# e.g. {"name": "gpu", "addresses": ["0", "1"]}. Spark runs it when a worker or executor starts;
# it fails (and Spark says so) when nvidia-smi is missing or lists no GPU.
set -euo pipefail
indices=$(nvidia-smi --query-gpu=index --format=csv,noheader)
if [ -z "$indices" ]; then
  echo "gpu_discovery.sh: nvidia-smi lists no GPU" >&2
  exit 1
fi
addresses=$(printf '%s\n' "$indices" | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [$addresses]}"
