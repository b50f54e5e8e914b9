#!/usr/bin/env bash
# Trains every ner-bert model class on the three corpora with the MiniLM encoder (frozen,
# weighted-layer pooling) and collects the scores into bench/results/ner_results.{md,json}.
# Usage: bash bench/ner/train_all.sh [RUNS_DIR]   (CPU: about an hour; the frozen BERT states of
# each corpus are computed once and shared by all its runs through --cache-dir)
# Select runs with ONLY="atis/BertBiLSTMAttnCRF conll/BertBiLSTMCRF" (corpus/model); the table
# keeps the rows of bench/results/ner_results.json that were not re-run.
# Threads: OMP_NUM_THREADS (default 1: the machine is shared); recorded in each command.txt.
# Casing: CASING=chars (default: word shapes + character CNN of the original words), shape,
# none or auto.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${NERTRON_DATA:-../shared/data}
RUNS=${1:-runs/ner}
CACHE=$RUNS/cache
mkdir -p "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="--cache-dir $CACHE --lr 1e-3 --enc-hidden-dim 128 --input-dropout 0.5 --batch-tokens 1024 --seed 0 --casing ${CASING:-chars}"

run() {  # corpus model epochs args...
  local corpus=$1 model=$2 epochs=$3; shift 3
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $corpus/$model "* ]]; then return; fi
  local out=$RUNS/$corpus/$model
  if [[ -f $out/results.json ]]; then echo "done already: $out"; return; fi
  rm -rf "$out" "$out.stdout.txt"; mkdir -p "$(dirname "$out")"
  echo "== $corpus $model ($epochs epochs) $(date -u +%T)"
  local cmd="nertron train --model $model --epochs $epochs --output $out $COMMON $*"
  # the output directory must be empty when training starts: its log goes beside it until then
  /usr/bin/time -f "%e s wall, %M KB max RSS" $cmd 2>&1 | grep -v "^\s*$" | tail -n 40 > "$out.stdout.txt" || { cat "$out.stdout.txt"; exit 1; }
  mv "$out.stdout.txt" "$out/stdout.txt"
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS $cmd" > "$out/command.txt"
  tail -n 3 "$out/stdout.txt"
}

ATIS="--format atis --train $DATA/atis/atis-2.train.w-intent.iob --valid $DATA/atis/atis-2.dev.w-intent.iob --test $DATA/atis/atis.test.w-intent.iob --unseen-labels score"
CONLL="--format conll --train $DATA/conll2003/eng.train --valid $DATA/conll2003/eng.testa --test $DATA/conll2003/eng.testb"
FRE="--format factrueval --train $DATA/factrueval2016/devset --valid-fraction 0.1 --test $DATA/factrueval2016/testset"

for model in BertBiLSTMAttnCRFJoint BertBiLSTMAttnNMTJoint BertBiLSTMCRF BertBiLSTMAttnCRF BertAttnCRF BertBiLSTMAttnNMT; do
  run atis $model 20 $ATIS
done
for model in BertBiLSTMAttnCRF BertBiLSTMCRF BertAttnCRF BertBiLSTMAttnNMT; do
  run conll $model 10 $CONLL
done
for model in BertBiLSTMAttnCRF BertBiLSTMCRF BertAttnCRF BertBiLSTMAttnNMT; do
  run factrueval $model 20 $FRE
done
previous=()
if [[ -f bench/results/ner_results.json ]]; then previous=(--previous bench/results/ner_results.json); fi
python bench/ner/results_table.py "$RUNS" bench/results/ner_results "${previous[@]}"
