#!/usr/bin/env python3
"""Recompute reference logits with Hugging Face transformers (PyTorch, CPU).

Used to check the shipped goldens: on the bf16 fixtures the goldens differ
from a plain transformers run by ~4e-4, while deltarun agrees with that run to
~4e-5 (docs/NUMERICS.md). Usage (needs torch + transformers, e.g. on the GPU
machine where they are installed):

    python3 scripts/hf_reference.py MODEL_DIR GOLDEN.safetensors N OUT.safetensors

writes F32 `logits` [N, V] of the golden's p0 prompt's first N ids, computed
in float64 with use_cache=False (whole prompt as one block).
"""
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file


def main():
    model_dir, golden, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ids = load_file(golden)["p0.input_ids"][:n].unsqueeze(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0].float().contiguous()
    meta = {"source": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, float64"}
    save_file({"logits": logits}, out, metadata=meta)


if __name__ == "__main__":
    main()
