# 8-byte all-reduce latency, one node, interleaved: mics before the change (a copy of build/mics
# at d20de63 in /tmp/mics_old), mics after it (build/mics), Open MPI 4.1 (bench/collectives.sh's
# ompi_collectives); five rounds; the column printed is time(us). 2-core Debian 12 VM, idle.
L="-b 8 -e 8 -w 100 -n 1000 -r 5"
for r in 1 2 3 4 5; do for n in 2 4; do
  o=$(/tmp/mics_old launch -n $n --no-prefix -- /tmp/mics_old bench --op all_reduce $L 2>&1 | awk '$1==8{print $6}')
  w=$(build/mics launch -n $n --no-prefix -- build/mics bench --op all_reduce $L 2>&1 | awk '$1==8{print $6}')
  m=$(mpirun --oversubscribe --allow-run-as-root --bind-to none -n $n build/peers/ompi_collectives $L -o all_reduce 2>&1 | awk '$1==8{print $5}' | head -1)
  echo "round $r n=$n: old $o new $w ompi $m"
done; done
