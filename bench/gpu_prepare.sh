#!/usr/bin/env bash
# Run HERE (the CPU machine) before a GPU session: puts what the GPU machine lacks into
# git-ignored folders of the checkout, to be named in the device tool's `carry`:
#   .whl/   wheels missing there (pytorch-crf, seqeval; Python 3.12, manylinux / pure)
#   .data/  a copy of ../shared/data (the GPU machine gets the working tree only)
#   .ckpt/  the MiniLM checkpoint with fp16 weights (the fp32 file, 87 MiB, is over the 64 MiB
#           carry limit; tests compare nertron and transformers loaded from the same file)
# then, on the device: bash bench/gpu_check.sh quick  (the headline table, <= 8 min; or the long
# sections without `quick`); it installs .whl and points NERTRON_DATA / NERTRON_CHECKPOINT at
# .data / .ckpt when they are there. The three folders come to about 60 MiB (du -sh below);
# with the working tree they must stay under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
for d in .whl .data .ckpt; do grep -qx "/$d/" "$exclude" 2>/dev/null || echo "/$d/" >> "$exclude"; done
rm -rf .whl .data .ckpt && mkdir -p .whl .ckpt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl pytorch-crf==0.7.2
python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl seqeval  # only an sdist on PyPI: build the (pure) wheel here
cp -r "${NERTRON_DATA:-../shared/data}" .data
python3 - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
from nertron.engine.checkpoint import default_checkpoint_dir
src = default_checkpoint_dir()
state = load_file(str(src / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, ".ckpt/model.safetensors")
for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    if (src / name).is_file():
        shutil.copy(src / name, ".ckpt" / Path(name))
PY
du -sh .whl .data .ckpt
du -shc .whl .data .ckpt | tail -1
echo 'carry: [".whl", ".data", ".ckpt"]; then: bash bench/gpu_check.sh quick'
