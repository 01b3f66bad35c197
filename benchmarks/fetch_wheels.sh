#!/usr/bin/env bash
# Downloads the Python 3.12 wheels the GPU machines need but cannot fetch (they have no network): diffusers
# and the packages it imports that their image lacks. Run it here, before a device call, then carry the
# folder: `run(command="bash benchmarks/gpu.sh", carry=[".whl"])`. .whl/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --dest .whl --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --implementation cp \
  "diffusers==0.42.1" importlib_metadata zipp requests charset_normalizer idna urllib3 certifi --no-deps
ls -la .whl
