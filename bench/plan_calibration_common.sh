# Shared by bench/plan_calibration.sh (mics train) and bench/plan_calibration_engine.sh (mics
# engine-bench): the load log, the rails' measurement and the calibrate-and-predict table.
# Sourced with MICS, OUT, ROUNDS and LAYOUTS set. CALIBRATE_ONLY=1 (in the caller's
# environment) skips the measurements and recomputes the table from the runs already in OUT
# with this build's `mics plan`: how the tables of docs/PLANNING.md are reproduced from the
# runs kept in bench/results/.

load() {
  echo "$1: $(uptime | sed 's/.*load average/load average/'); cpu pressure $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)" >>"$OUT/load.txt"
}

# Measures the rails (unless CALIBRATE_ONLY) and sets HOST, the `--cluster` of this host.
measure_rails() {
  if [ "${CALIBRATE_ONLY:-0}" != 1 ]; then
    load bench
    "$MICS" launch -n 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
    "$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
  fi
  [ -f "$OUT/bench_intra.json" ] && [ -f "$OUT/bench_inter.json" ] ||
    { echo "no rails measurement in $OUT (bench_intra.json, bench_inter.json)" >&2; exit 2; }
  HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"
}

# calibrate_all SUFFIX: for every round and layout, calibrate on $OUT/rR/LAYOUT$SUFFIX and
# predict the round's other layouts. One line per (round, calibrated on, predicted) in
# OUT/table.txt (the check's error in percent), then how many pairs are within 20%.
calibrate_all() {
  local suffix=$1 round fit other checks
  echo "round fit predicted predicted_ms measured_ms error_pct" >"$OUT/table.txt"
  for round in $(seq 1 "$ROUNDS"); do
    for fit in $LAYOUTS; do
      checks=""
      for other in $LAYOUTS; do [ "$other" = "$fit" ] || checks="$checks --check $OUT/r$round/$other$suffix"; done
      echo "== round $round, calibrated on $fit"
      # shellcheck disable=SC2086
      "$MICS" plan --calibrate "$OUT/r$round/$fit$suffix" --cluster "$HOST" $checks | tee "$OUT/r$round.fit_$fit.txt"
      # the run's layout: .../rR/LAYOUT/metrics.jsonl (train) or .../rR/LAYOUT.json#STRATEGY (engine bench)
      # shellcheck disable=SC2086
      "$MICS" plan --calibrate "$OUT/r$round/$fit$suffix" --cluster "$HOST" $checks --json |
        jq -r --arg r "$round" --arg f "$fit" '.checks[] | (.run | split("#")[0] | split("/")) as $p
          | [$r, $f, (if $p[-1] == "metrics.jsonl" then $p[-2] else ($p[-1] | sub("\\.json$"; "")) end),
             (.predicted_step_s * 1e3 | round), (.measured_step_s * 1e3 | round), (.error * 1000 | round / 10)] | @tsv' \
          >>"$OUT/table.txt"
    done
  done
  column -t "$OUT/table.txt"
  awk 'NR > 1 { n++; if ($6 <= 20 && $6 >= -20) ok++ } END { printf "within 20%%: %d of %d pairs\n", ok, n }' \
    "$OUT/table.txt" | tee -a "$OUT/table.txt"
}
