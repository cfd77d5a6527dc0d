#!/usr/bin/env bash
# The full-size PolyMNIST comparison (docs/results.md, section 2g): every model trained on the
# 60,000 training tuples for 3 epochs (MoPoE 8), 2,000 test tuples, 3 mask seeds, on one device.
#
#   bash benchmarks/full_size.sh OUT [DEVICE] [SECONDS]
#
# DEVICE: cpu, cuda, cuda:N (default cuda). SECONDS: a wall-clock budget (default 3600); a stage
# that would start after it is skipped, and a running stage is stopped at it (the benchmark
# folders are resumable: rerun the same command to finish). Stages, most important first:
#   1. the DyMo backbone (stratified schedule, the default) with retrieval and MoPoE recovery:
#      DyMo (tuned rule), the paper's rule, the ablation, the upper bounds, the quality sweep;
#   2. the strongest baselines (late fusion, QMF, MTL), then the single-modality table;
#   3. the other baselines (CONCAT + recovery, ModDrop, unimodal, DynMM);
#   4. the paper's subset schedule on the same recoverers (DyMo, paper rule, discard, impute-all);
#   5. the incomplete-multimodal baselines (PDF, M3Care, MUSE, MAP).
# Each stage is one resumable `dymo benchmark` call into OUT/new or OUT/paper; a stage that fails
# is logged and left out of the final report, which covers every stage that finished.
set -u
OUT=${1:?usage: full_size.sh OUT [DEVICE] [SECONDS]}
DEV=${2:-cuda}
BUDGET=${3:-3600}
PY=${PYTHON:-python3}
export DYMO_DATA=${DYMO_DATA:-$OUT/data}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

# Smaller scales for a rehearsal: MISSING, SEEDS, EPOCHS, N_TRAIN, N_VAL, N_TEST.
COMMON=(--data polymnist --device "$DEV" --missing "${MISSING:-random:0.4,random:0.6,random:0.8}" --seeds "${SEEDS:-0,1,2}"
        --max-val-samples "${N_VAL:-1000}" --max-test-samples "${N_TEST:-2000}" --epochs "${EPOCHS:-3}" --no-progress)
[ -n "${N_TRAIN:-}" ] && COMMON+=(--max-train-samples "$N_TRAIN")
NEW_CFG=configs/bench-polymnist-full-v2.json
PAPER_CFG=configs/bench-polymnist-full-paper-schedule.json
done_new=""
done_paper=""

stage() {  # stage NAME FOLDER CONFIG METHODS [more benchmark options]
    local name=$1 folder=$2 cfg=$3 methods=$4; shift 4
    local t=$(left)
    if (( t < 20 )); then echo "== $name: skipped, budget spent"; return 1; fi
    echo "== $name: start ($t s left)"
    local t0=$(date +%s)
    timeout "$t" "$PY" -m dymo.cli.main benchmark "${COMMON[@]}" --out "$OUT/$folder" --config "$cfg" --methods "$methods" "$@"
    local rc=$?
    echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
    return $rc
}

echo "== data: start"
t0=$(date +%s)
[ -f "$DYMO_DATA/polymnist/meta.json" ] || "$PY" -m dymo.cli.main data build polymnist || exit 1
echo "== data: built in $(( $(date +%s) - t0 )) s"

G1=dymo,dymo-paper,iterative,simultaneous,fuse-all,discard,oracle-complete,oracle-selection
sweep=()
stage "1 DyMo" new "$NEW_CFG" "$G1" --recovery retrieval,mopoe --quality-sweep && done_new=$G1 && sweep=(--quality-sweep)
stage "2 baselines" new "$NEW_CFG" late-fusion,qmf,mtl --recovery retrieval,mopoe && done_new=$done_new,late-fusion,qmf,mtl
if [ -d "$OUT/new/models/baseline-late-fusion" ] && [ -d "$OUT/new/models/backbone-cosine" ]; then
    "$PY" benchmarks/single_modality.py --backbone "$OUT/new/models/backbone-cosine" \
        --baseline "$OUT/new/models/baseline-late-fusion" --n 2000 --threads 4 --device "$DEV" | tee "$OUT/single_modality.md"
fi
stage "3 baselines" new "$NEW_CFG" concat,moddrop,unimodal,dynmm --recovery retrieval,mopoe && done_new=$done_new,concat,moddrop,unimodal,dynmm
RECS=$OUT/new/models/recovery-retrieval,$OUT/new/models/recovery-mopoe
stage "4 paper schedule" paper "$PAPER_CFG" dymo,dymo-paper,discard,fuse-all --recovery "$RECS" && done_paper=yes
stage "5 baselines" new "$NEW_CFG" pdf,m3care,muse,map --recovery retrieval,mopoe && done_new=$done_new,pdf,m3care,muse,map

# The reports over every stage that finished (all cells exist: nothing is computed again).
BUDGET=$(( BUDGET + 120 ))
[ -n "$done_new" ] && stage "report" new "$NEW_CFG" "${done_new#,}" --recovery retrieval,mopoe "${sweep[@]}"
echo "== finished in $(( $(date +%s) - start )) s (new: ${done_new#,}; paper schedule: ${done_paper:-no})"
