#!/usr/bin/env bash
# The whole loop on the default model (SmolLM2-135M), as `make demo` runs it:
#   1. inspect   why the model says " Paris" after "The capital of France is" (exact per-component split);
#   2. train     two LoRA edits that make it say " Lyon": a careless one (the four edit examples only) and a
#                careful one (the same plus examples of facts that must stay: other capitals, Paris facts);
#   3. diff      each edit against the base over the task's intended and control probes (which token choices
#                moved, which components moved them) -> an HTML report each;
#   4. check     the same probes as a CI gate with the default thresholds (intended: target top-1 or +0.1 p;
#                controls: top-1 kept and KL <= 0.05 nats). Its verdict is printed, not the demo's exit code:
#                the demo exits non-zero only when something failed to run;
#   5. edit      the third edit, made by `tokenlens edit` (locate, LoRA on the located MLPs with the fact's
#                neighbour prompts preserved), then checked on the same probes.
# Everything lands in reports/demo/ (overwritten each run). Settings are the documented defaults, not tuned
# to make the check pass.
set -euo pipefail
cd "$(dirname "$0")/.."
tl=.venv/bin/tokenlens
out=reports/demo
task=tokenlens/tasks/fact_edit
prompt=${PROMPT:-The capital of France is}
started=$(date +%s)
mkdir -p "$out"

echo "== 1/5 inspect: what the default model predicts after \"$prompt\", and why  [at ${SECONDS} s]"
"$tl" inspect --prompt "$prompt" --heads --lens all --format html --out "$out/inspect.html" --force
"$tl" inspect --prompt "$prompt" --format json --out "$out/inspect.json" --force
"$tl" inspect --prompt "$prompt"

for edit in careless careful; do
  data=$task/train.jsonl
  [[ $edit == careful ]] && data=$task/train_careful.jsonl
  echo
  echo "== 2/5 train ($edit): LoRA on every linear of every layer, lr 1e-3, 30 steps on $data  [at ${SECONDS} s]"
  "$tl" train --method lora --data "$data" --out "$out/runs/$edit" --steps 30 --lr 1e-3 --seed 0 --force
  echo "== 3/5 diff ($edit): base vs tuned over $task/probes.jsonl  [at ${SECONDS} s]"
  "$tl" diff --tuned "$out/runs/$edit" --probes "$task/probes.jsonl" --format html \
    --out "$out/diff-$edit.html" --force
  echo "== 4/5 check ($edit)  [at ${SECONDS} s]"
  set +e
  "$tl" check --tuned "$out/runs/$edit" --probes "$task/probes.jsonl" | tee "$out/check-$edit.txt"
  status=${PIPESTATUS[0]}
  set -e
  if (( status > 1 )); then
    exit "$status"  # the check could not run; 1 only means a probe failed, which the demo reports
  fi
done

echo
echo "== 5/5 edit: tokenlens edit (locate, edit with the neighbour prompts preserved), then check  [at ${SECONDS} s]"
rm -rf "$out/runs/edit"
printf 'The capital city of France is called\nThe capital of the French Republic is\n' > "$out/paraphrases.txt"
set +e
# its own check is over the same probes (the task's, its default keep set): the verdict is saved as it prints
"$tl" edit --prompt "$prompt" --target " Lyon" --subject France --paraphrases "$out/paraphrases.txt" \
  --out "$out/runs/edit" | tee "$out/check-edit.txt"
status=${PIPESTATUS[0]}
set -e
if (( status > 1 )); then exit "$status"; fi  # 1: the edit's own check failed, which the demo reports

echo
echo "demo finished in $(( $(date +%s) - started )) s: $out/inspect.html, $out/diff-careless.html," \
  "$out/diff-careful.html, $out/check-*.txt, trained runs and the edit in $out/runs/"
