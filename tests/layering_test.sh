#!/usr/bin/env bash
# Lower layers never include higher ones (docs/ARCHITECTURE.md). Order, low to high:
set -u
SRC=${2:-.}/src
order=(base io obs bootstrap fabric comm topo shard model plan train tools)
rank_of() { for i in "${!order[@]}"; do [ "${order[$i]}" = "$1" ] && echo "$i" && return; done; echo -1; }
bad=0
for dir in "$SRC"/*/; do
  layer=$(basename "$dir")
  mine=$(rank_of "$layer")
  if [ "$mine" -lt 0 ]; then echo "unknown layer folder src/$layer: add it to tests/layering_test.sh"; bad=1; continue; fi
  while IFS=: read -r file inc; do
    target=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$inc")
    [ "$target" = "mics" ] && continue   # generated build info
    theirs=$(rank_of "$target")
    if [ "$theirs" -gt "$mine" ]; then echo "layering: $file includes $target/ (higher than $layer/)"; bad=1; fi
  done < <(grep -HE '#include "[a-z_]+/' "$dir"*.{hpp,cpp} 2>/dev/null)
done
[ $bad -eq 0 ] && echo "layering ok"
exit $bad
