#!/usr/bin/env bash
# TorchRec for trainer.embedding_backend=torchrec (docs/distributed.md, "TorchRec backend"), next to
# the torch that is installed, without replacing it:
#
#   bash scripts/install_torchrec.sh          # CPU: torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0
#   bash scripts/install_torchrec.sh cuda     # CUDA: torchrec 1.8.0 + fbgemm-gpu 1.8.0
#
# torchrec's own requirement names the CUDA build `fbgemm-gpu`, which does not load on a machine
# without CUDA, and a plain `pip install torchrec` may also replace torch. So torchrec and the
# FBGEMM build are installed with --no-deps, and torchrec's pure-Python dependencies (the extra
# `mtlrec[torchrec]`, listed again below) with torch pinned to the installed version.
# PYTHON=/path/to/python picks the interpreter (default: python).
set -euo pipefail
kind="${1:-cpu}"
python="${PYTHON:-python}"
case "$kind" in
  cpu) fbgemm="fbgemm-gpu-cpu==1.8.0" ;;
  cuda) fbgemm="fbgemm-gpu==1.8.0" ;;
  *) echo "usage: bash scripts/install_torchrec.sh [cpu|cuda]" >&2; exit 2 ;;
esac
torch_version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
pin="$(mktemp)"
trap 'rm -f "$pin"' EXIT
echo "torch==$torch_version" > "$pin"
"$python" -m pip install -q --no-deps "torchrec==1.8.0" "$fbgemm"
# the extra mtlrec[torchrec] (pyproject.toml): keep the two lists the same
"$python" -m pip install -q -c "$pin" "tensordict>=0.9" "torchmetrics>=1.0" "pyre-extensions" \
    "iopath" "tqdm"
"$python" -c 'import torch, torchrec, fbgemm_gpu; print(f"torch {torch.__version__}, torchrec {torchrec.__version__}: ok")'
