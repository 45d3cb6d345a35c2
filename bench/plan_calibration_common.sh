# Shared by bench/plan_calibration.sh (mics train) and bench/plan_calibration_engine.sh (mics
# engine-bench): the load log, the rails' measurement and the calibrate-and-predict table.
# Sourced with MICS, OUT, ROUNDS and LAYOUTS set. CALIBRATE_ONLY=1 (in the caller's
# environment) skips the measurements and recomputes the table from the runs already in OUT
# with this build's `mics plan`: how the tables of docs/PLANNING.md are reproduced from the
# runs kept in bench/results/.

load() {
  echo "$1: $(uptime | sed 's/.*load average/load average/'); cpu pressure $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)" >>"$OUT/load.txt"
}

# wait_for_idle: before the first round, wait (up to IDLE_WAIT_S, default 300 s) until the 1-minute
# load average is below IDLE_LOAD (default 1.0). A run started right after another (four back to
# back in 2026-12-01d) ran every layout 5-20% slower than the first and one layout 25% slower,
# in every round (e4 in docs/PLANNING.md); runs started on a settled host did not. Waits are logged
# in OUT/load.txt; after the longest wait the run goes on with a warning.
wait_for_idle() {
  [ "${CALIBRATE_ONLY:-0}" = 1 ] && return 0
  local limit=${IDLE_LOAD:-1.0} max=${IDLE_WAIT_S:-300} waited=0 now
  now=$(cut -d' ' -f1 /proc/loadavg)
  while awk -v a="$now" -v b="$limit" 'BEGIN { exit !(a >= b) }' && [ "$waited" -lt "$max" ]; do
    sleep 10
    waited=$((waited + 10))
    now=$(cut -d' ' -f1 /proc/loadavg)
  done
  load "waited ${waited}s for a 1-minute load below $limit"
  if awk -v a="$now" -v b="$limit" 'BEGIN { exit !(a >= b) }'; then
    echo "warning: the host's 1-minute load is still $now after ${waited}s; the predictions will be less exact" >&2
  fi
}

# The rails: `mics bench --json` of an all-gather on 2 ranks of one node (shm) and on 4 ranks of 2
# emulated nodes (tcp), each size the fastest of 3 timed blocks (-r 3: one descheduled block on a
# shared host otherwise sets a rail's latency; seen: 1.6 ms for a 64 KiB all-gather of ~50 us).
# measure_rails_round R runs them once more, into OUT/rails/rR, at the start of every round: the
# tcp rail on this 2-core host swings 2-3x from one minute to the next (the 4 MiB all-gather
# 1.3-3.4 ms between runs of 2026-12-01c), so one measurement at the start set the cross-node
# cost of every prediction by chance. rails_done sets HOST, the `--cluster` of this host, to
# every round's files: `mics plan` keeps, per rail and size, the fastest round (as the layouts'
# headline takes each layout's fastest round). Runs kept from before (no OUT/rails): the two
# files OUT/bench_intra.json and OUT/bench_inter.json.
measure_rails_round() {
  [ "${CALIBRATE_ONLY:-0}" = 1 ] && return 0
  local dir="$OUT/rails/r$1"
  mkdir -p "$dir"
  load "round $1 rails"
  "$MICS" launch -n 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 10 -w 5 -r 3 --json "$dir/bench_intra.json" >/dev/null
  "$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 10 -w 5 -r 3 --json "$dir/bench_inter.json" >/dev/null
}

rails_done() {
  local files
  files=$(ls "$OUT"/rails/r*/bench_intra.json "$OUT"/rails/r*/bench_inter.json 2>/dev/null | paste -sd, - || true)
  if [ -z "$files" ]; then
    [ -f "$OUT/bench_intra.json" ] && [ -f "$OUT/bench_inter.json" ] ||
      { echo "no rails measurement in $OUT (rails/r*/ or bench_intra.json, bench_inter.json)" >&2; exit 2; }
    files="$OUT/bench_intra.json,$OUT/bench_inter.json"
  fi
  HOST="host:$files"
}

# pairs_table DIR SUFFIX LABEL: calibrate on each $DIR/LAYOUT$SUFFIX and predict the others of DIR;
# appends one line per (LABEL, calibrated on, predicted) to OUT/table.txt (error in percent).
pairs_table() {
  local dir=$1 suffix=$2 label=$3 fit other checks
  for fit in $LAYOUTS; do
    checks=""
    for other in $LAYOUTS; do [ "$other" = "$fit" ] || checks="$checks --check $dir/$other$suffix"; done
    echo "== $label, calibrated on $fit"
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$dir/$fit$suffix" --cluster "$HOST" --step-quantile "$QUANTILE" $checks |
      tee "$OUT/$label.fit_$fit.txt"
    # the run's layout: .../LAYOUT/metrics.jsonl (train) or .../LAYOUT.json#STRATEGY (engine bench)
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$dir/$fit$suffix" --cluster "$HOST" --step-quantile "$QUANTILE" $checks --json |
      jq -r --arg r "$label" --arg f "$fit" '.checks[] | (.run | split("#")[0] | split("/")) as $p
        | [$r, $f, (if $p[-1] == "metrics.jsonl" then $p[-2] else ($p[-1] | sub("\\.json$"; "")) end),
           (.predicted_step_s * 1e3 | round), (.measured_step_s * 1e3 | round), (.error * 1000 | round / 10)] | @tsv' \
        >>"$OUT/table.txt"
  done
}

# calibrate_all SUFFIX: the runs' step time is the QUANTILE (env, default 0.25) of their steps.
# The headline table ("best"): for every layout the round whose step was fastest (as
# bench/collectives.sh keeps each system's best round: a slow minute on a shared host hits one
# round, not the layout), then calibrate on each and predict the others. Then the same per
# round (r1, r2, ...). OUT/table.txt holds every pair and how many are within 20%, overall and
# for the best rounds.
calibrate_all() {
  local suffix=$1 round l best best_ms ms
  QUANTILE=${QUANTILE:-0.25}
  echo "rounds fit predicted predicted_ms measured_ms error_pct" >"$OUT/table.txt"
  rm -rf "$OUT/best" && mkdir -p "$OUT/best"
  for l in $LAYOUTS; do
    best="" best_ms=""
    for round in $(seq 1 "$ROUNDS"); do
      ms=$("$MICS" plan --calibrate "$OUT/r$round/$l$suffix" --cluster "$HOST" --step-quantile "$QUANTILE" --json |
        jq '.measured_step_s * 1e6 | round')
      if [ -z "$best" ] || [ "$ms" -lt "$best_ms" ]; then best=$round best_ms=$ms; fi
    done
    echo "best round of $l: r$best ($((best_ms / 1000)) ms at quantile $QUANTILE)" | tee -a "$OUT/best/rounds.txt"
    ln -s "../r$best/$l$suffix" "$OUT/best/$l$suffix"
  done
  pairs_table "$OUT/best" "$suffix" best
  for round in $(seq 1 "$ROUNDS"); do pairs_table "$OUT/r$round" "$suffix" "r$round"; done
  column -t "$OUT/table.txt"
  awk -v q="$QUANTILE" 'NR > 1 && $1 != "within" { n++; ok += ($6 <= 20 && $6 >= -20);
        if ($1 == "best") { nb++; okb += ($6 <= 20 && $6 >= -20) } }
      END { printf "within 20%%: %d of %d pairs (best rounds), %d of %d (every round); step = quantile %s\n", okb, nb, ok, n, q }' \
    "$OUT/table.txt" | tee -a "$OUT/table.txt"
}
