#!/usr/bin/env bash
# One GPU session: the GPU test suite, then the benchmarks, logs under $OUT (default ./runs).
# usage: bash tools/device_check.sh [tests|attention|seed|gpt2|bf16|recipe|all]   (run from the repository root)
#   attention: the fused attention kernels against NumPy and timed against PyTorch's SDPA
#   seed: the seed workload, fp32 and TF32, fused against --no-fuse, and the TF32 profile
#   gpt2: GPT-2 124M shapes: TF32 throughput, fp32 peak memory with each --remat policy
#   bf16: GPT-2 124M and the seed workload compiled with dtype=bf16, against torch eager and
#         torch.compile under bf16 autocast, and the 124M bf16 profile
#   recipe: nanoGPT's shakespeare-char recipe (bf16, dropout 0.2) on a text graphgpt has never
#           seen, Python's own documentation topics, with held-out evaluation, the same run in
#           PyTorch (tools/recipe_torch.py), then its step against torch.compile bf16 on the same
#           model: logs and summaries under $OUT
set -uo pipefail
OUT=${OUT:-runs}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -m gpu -q -p no:cacheprovider -rf --durations=15 2>&1 | tee "$OUT/gpu_tests.log"
fi
if [[ $what == attention || $what == all ]]; then
  python3 tools/attention_check.py 2>&1 | tee "$OUT/attention_check.log"
fi
if [[ $what == seed || $what == all ]]; then
  corpus=${GRAPHGPT_SEED_CORPUS:-../shared/data/dummy.txt}
  python3 tools/compile.py model.py --data "$corpus" --out /tmp/seed >/dev/null
  python3 tools/compile.py model.py --data "$corpus" --out /tmp/seed_nofuse --no-fuse >/dev/null
  python3 tools/bench.py --plan /tmp/seed --json "$OUT/bench_seed_fp32.json" 2>&1 | tee "$OUT/bench_seed_fp32.log"
  python3 tools/bench.py --plan /tmp/seed_nofuse --no-torch --json "$OUT/bench_seed_fp32_nofuse.json" 2>&1 \
    | tee "$OUT/bench_seed_fp32_nofuse.log"
  python3 tools/bench.py --plan /tmp/seed --tf32 --json "$OUT/bench_seed_tf32.json" 2>&1 | tee "$OUT/bench_seed_tf32.log"
  python3 -m graphgpt.run --plan /tmp/seed --data "$corpus" --tf32 --profile --steps 3 2>&1 | tee "$OUT/profile_seed_tf32.log"
fi
if [[ $what == gpt2 || $what == all ]]; then
  gpt2=(--set n_layer=12 --set n_head=12 --set n_embd=768 --set block_size=1024 --set vocab_size=50304 --set batch_size=16)
  for remat in none attention all; do
    python3 tools/compile.py model.py --out "/tmp/gpt2_$remat" --remat "$remat" "${gpt2[@]}" >/dev/null
  done
  python3 tools/bench.py --plan /tmp/gpt2_attention --tf32 --eager-only --steps 10 --repeat 3 --json "$OUT/bench_124m_tf32.json" 2>&1 \
    | tee "$OUT/bench_124m_tf32.log"
  python3 tools/bench.py --plan /tmp/gpt2_attention --eager-only --steps 3 --repeat 3 --json "$OUT/bench_124m_fp32.json" 2>&1 \
    | tee "$OUT/bench_124m_fp32.log"
  for remat in none all; do
    python3 tools/bench.py --plan "/tmp/gpt2_$remat" --no-torch --steps 3 --repeat 3 \
      --json "$OUT/bench_124m_fp32_remat_$remat.json" 2>&1 | tee "$OUT/bench_124m_fp32_remat_$remat.log"
  done
fi
if [[ $what == bf16 || $what == all ]]; then
  gpt2=(--set n_layer=12 --set n_head=12 --set n_embd=768 --set block_size=1024 --set vocab_size=50304 --set batch_size=16)
  python3 tools/compile.py model.py --out /tmp/gpt2_bf16 --set dtype=bf16 "${gpt2[@]}" >/dev/null
  tail -25 /tmp/gpt2_bf16/report.txt | tee "$OUT/compile_124m_bf16.txt"
  python3 tools/bench.py --plan /tmp/gpt2_bf16 --steps 10 --repeat 3 --json "$OUT/bench_124m_bf16.json" 2>&1 \
    | tee "$OUT/bench_124m_bf16.log"
  corpus=${GRAPHGPT_SEED_CORPUS:-../shared/data/dummy.txt}
  python3 -m graphgpt.run --plan /tmp/gpt2_bf16 --data "$corpus" --profile --steps 3 2>&1 | tee "$OUT/profile_124m_bf16.log"
  python3 tools/compile.py model.py --data "$corpus" --set dtype=bf16 --out /tmp/seed_bf16 >/dev/null
  python3 tools/bench.py --plan /tmp/seed_bf16 --json "$OUT/bench_seed_bf16.json" 2>&1 | tee "$OUT/bench_seed_bf16.log"
fi
if [[ $what == recipe || $what == all ]]; then
  python3 -c "import pydoc_data.topics as t; print('\n\n'.join(t.topics[k] for k in sorted(t.topics)))" >/tmp/recipe.txt
  recipe=(--set batch_size=64 --set optimizer=adamw --set lr=1e-3 --set min_lr=1e-4 --set beta2=0.99
          --set weight_decay=0.1 --set lr_schedule=cosine --set warmup_steps=100 --set decay_steps=5000
          --set dropout=0.2 --set dtype=bf16)
  python3 tools/compile.py model.py --data /tmp/recipe.txt --tokenizer char --out /tmp/recipe "${recipe[@]}" >/dev/null
  rm -f "$OUT/recipe.jsonl"
  python3 -m graphgpt.run --plan /tmp/recipe --data /tmp/recipe.txt --val-fraction 0.1 --steps "${RECIPE_STEPS:-5000}" \
    --eval-every 250 --eval-batches 200 --log "$OUT/recipe.jsonl" --generate 200 --temperature 0.8 --top-k 40 \
    2>&1 | tee "$OUT/recipe.log"
  python3 tools/eval_table.py "$OUT/recipe.jsonl" | tee "$OUT/recipe_table.txt"
  # the same run in PyTorch (torch.compile, AdamW, same weights, split, windows and schedule): the reference
  rm -f "$OUT/recipe_torch.jsonl"
  python3 tools/recipe_torch.py --plan /tmp/recipe --data /tmp/recipe.txt --val-fraction 0.1 --steps "${RECIPE_STEPS:-5000}" \
    --eval-every 250 --eval-batches 200 --log "$OUT/recipe_torch.jsonl" 2>&1 | tee "$OUT/recipe_torch.log"
  python3 tools/eval_table.py "$OUT/recipe_torch.jsonl" | tee "$OUT/recipe_torch_table.txt"
  python3 tools/bench.py --plan /tmp/recipe --steps 20 --repeat 3 --json "$OUT/bench_recipe.json" 2>&1 | tee "$OUT/bench_recipe.log"
fi
