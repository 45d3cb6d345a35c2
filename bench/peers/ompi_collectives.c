/* Open MPI peer benchmark for `mics bench`: MPI_Allgather, MPI_Reduce_scatter_block and
 * MPI_Allreduce on float with MPI_SUM, printed in nccl-tests' columns so the two tables can
 * be read side by side. Also MPI_Reduce_scatter with equal counts (reduce_scatter_v): Open
 * MPI 4.1's tuned component runs a ring for it but not for MPI_Reduce_scatter_block, whose
 * algorithms (linear, recursive doubling/halving, butterfly) are several times slower on
 * large arrays; the fair peer for a reduce-scatter is the better of the two.
 *
 *   size   bytes of the whole array: the gathered result (all-gather), the input of the
 *          reduction (reduce-scatter, all-reduce); rounded down to a multiple of 4*ranks for
 *          all-gather and reduce-scatter, of 4 for all-reduce
 *   count  elements passed to the call, as nccl-tests prints it: per rank for all-gather
 *          and reduce-scatter, the whole array for all-reduce
 *   time   average time of one call in microseconds: each rank times `iters` calls after
 *          `warmup` untimed ones, and the slowest rank's average is reported (MPI_Reduce MAX);
 *          with -r RUNS the timed block is repeated and the fastest run is kept (on a shared,
 *          noisy machine the best run is the closest to the ceiling)
 *   algbw  size / time, GB/s (1e9 bytes)
 *   busbw  algbw * 2(n-1)/n for all-reduce, algbw * (n-1)/n for all-gather and
 *          reduce-scatter: the bandwidth each rank's link must carry with a ring
 *   #wrong elements that differ from the exact result after the timed calls (-c 0: skipped)
 *
 * Build: bench/peers/build.sh. Run:
 *   mpirun -n 4 build/peers/ompi_collectives -b 1M -e 256M -f 4 -w 5 -n 20
 */
#include <mpi.h>

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum Op { OP_ALLGATHER = 1, OP_REDUCE_SCATTER = 2, OP_ALLREDUCE = 4, OP_REDUCE_SCATTER_V = 8 };
#define OP_ALL (OP_ALLGATHER | OP_REDUCE_SCATTER | OP_ALLREDUCE | OP_REDUCE_SCATTER_V)

static const char* op_name(int op) {
  switch (op) {
    case OP_ALLGATHER:
      return "all_gather";
    case OP_REDUCE_SCATTER:
      return "reduce_scatter";
    case OP_REDUCE_SCATTER_V:
      return "reduce_scatter_v";
    default:
      return "all_reduce";
  }
}

static int is_reduce_scatter(int op) {
  return op == OP_REDUCE_SCATTER || op == OP_REDUCE_SCATTER_V;
}

/* "64M", "1G", "4096", "2K" -> bytes (binary suffixes, as nccl-tests). */
static int64_t parse_size(const char* text) {
  char* end = NULL;
  double v = strtod(text, &end);
  if (end == text || v < 0) return -1;
  switch (*end) {
    case 'k':
    case 'K':
      v *= 1024.0;
      ++end;
      break;
    case 'm':
    case 'M':
      v *= 1024.0 * 1024;
      ++end;
      break;
    case 'g':
    case 'G':
      v *= 1024.0 * 1024 * 1024;
      ++end;
      break;
    default:
      break;
  }
  if (*end == 'i') ++end;
  if (*end == 'B' || *end == 'b') ++end;
  if (*end != '\0') return -1;
  return (int64_t)v;
}

static void usage(const char* prog) {
  fprintf(
      stderr,
      "usage: %s [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-w|--warmup N] [-n|--iters N]\n"
      "          [-r|--runs N] [-o|--op LIST] [-c|--check 0|1] [-j|--json FILE]\n"
      "LIST: comma-separated all_gather, reduce_scatter (MPI_Reduce_scatter_block),\n"
      "      reduce_scatter_v (MPI_Reduce_scatter), all_reduce, or all\n"
      "sizes take K/M/G suffixes (binary); defaults: -b 1M -e 64M -f 4 -w 5 -n 20 -r 1 -o all\n",
      prog);
}

/* Exact in float: small integers whose sums stay below 2^24. */
static float pattern(int rank, size_t i) {
  return (float)((int)(i % 251) + 3 * rank);
}

/* count: elements the call takes (per rank for all-gather and reduce-scatter). */
static double run_op(int op, size_t count, float* send, float* recv, const int* recvcounts,
                     int iters) {
  double t0 = MPI_Wtime();
  for (int it = 0; it < iters; ++it) {
    if (op == OP_ALLGATHER)
      MPI_Allgather(send, (int)count, MPI_FLOAT, recv, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
    else if (op == OP_REDUCE_SCATTER)
      MPI_Reduce_scatter_block(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (op == OP_REDUCE_SCATTER_V)
      MPI_Reduce_scatter(send, recv, recvcounts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else
      MPI_Allreduce(send, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
  return MPI_Wtime() - t0;
}

/* Fills send with this rank's input. */
static void fill_input(int op, int rank, size_t count, int nranks, float* send) {
  size_t n = is_reduce_scatter(op) ? count * (size_t)nranks : count;
  for (size_t i = 0; i < n; ++i) send[i] = pattern(rank, op == OP_ALLGATHER ? i + rank : i);
}

/* Elements of recv that differ from the exact result. */
static long long count_wrong(int op, int rank, size_t count, int nranks, const float* recv) {
  long long wrong = 0;
  if (op == OP_ALLGATHER) {
    for (int r = 0; r < nranks; ++r)
      for (size_t i = 0; i < count; ++i)
        if (recv[(size_t)r * count + i] != pattern(r, i + r)) ++wrong;
    return wrong;
  }
  /* sum over ranks of pattern(r, i) = n*(i%251) + 3*n(n-1)/2 */
  size_t first = is_reduce_scatter(op) ? (size_t)rank * count : 0;
  for (size_t k = 0; k < count; ++k) {
    size_t i = first + k;
    float want = (float)(nranks * (int)(i % 251) + 3 * nranks * (nranks - 1) / 2);
    if (recv[k] != want) ++wrong;
  }
  return wrong;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, nranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);

  int64_t minbytes = 1 << 20, maxbytes = 64 << 20;
  double factor = 4;
  int warmup = 5, iters = 20, runs = 1, check = 1, ops = OP_ALL;
  const char* json_path = NULL;
  static struct option long_opts[] = {{"minbytes", required_argument, 0, 'b'},
                                      {"maxbytes", required_argument, 0, 'e'},
                                      {"stepfactor", required_argument, 0, 'f'},
                                      {"warmup", required_argument, 0, 'w'},
                                      {"iters", required_argument, 0, 'n'},
                                      {"runs", required_argument, 0, 'r'},
                                      {"op", required_argument, 0, 'o'},
                                      {"check", required_argument, 0, 'c'},
                                      {"json", required_argument, 0, 'j'},
                                      {"help", no_argument, 0, 'h'},
                                      {0, 0, 0, 0}};
  int c;
  int bad = 0;
  while ((c = getopt_long(argc, argv, "b:e:f:w:n:r:o:c:j:h", long_opts, NULL)) != -1) {
    switch (c) {
      case 'b':
        minbytes = parse_size(optarg);
        bad |= minbytes < 0;
        break;
      case 'e':
        maxbytes = parse_size(optarg);
        bad |= maxbytes < 0;
        break;
      case 'f':
        factor = atof(optarg);
        bad |= factor <= 1.0;
        break;
      case 'w':
        warmup = atoi(optarg);
        bad |= warmup < 0;
        break;
      case 'n':
        iters = atoi(optarg);
        bad |= iters < 1;
        break;
      case 'r':
        runs = atoi(optarg);
        bad |= runs < 1;
        break;
      case 'c':
        check = atoi(optarg);
        break;
      case 'j':
        json_path = optarg;
        break;
      case 'o': {
        ops = 0;
        char* list = strdup(optarg);
        for (char* tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
          if (!strcmp(tok, "all"))
            ops |= OP_ALL;
          else if (!strcmp(tok, "all_gather") || !strcmp(tok, "allgather"))
            ops |= OP_ALLGATHER;
          else if (!strcmp(tok, "reduce_scatter") || !strcmp(tok, "reducescatter"))
            ops |= OP_REDUCE_SCATTER;
          else if (!strcmp(tok, "reduce_scatter_v"))
            ops |= OP_REDUCE_SCATTER_V;
          else if (!strcmp(tok, "all_reduce") || !strcmp(tok, "allreduce"))
            ops |= OP_ALLREDUCE;
          else
            bad = 1;
        }
        free(list);
        break;
      }
      default:
        bad = 1;
        break;
    }
  }
  if (bad || ops == 0 || minbytes > maxbytes) {
    if (rank == 0) usage(argv[0]);
    MPI_Finalize();
    return 2;
  }

  const size_t unit = sizeof(float) * (size_t)nranks;
  const size_t max_elems = (size_t)(maxbytes / (int64_t)unit) * (size_t)nranks + nranks;
  float* send = malloc(max_elems * sizeof(float));
  float* recv = malloc(max_elems * sizeof(float));
  if (!send || !recv) {
    fprintf(stderr, "rank %d: cannot allocate %zu bytes\n", rank, 2 * max_elems * sizeof(float));
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  memset(send, 0, max_elems * sizeof(float)); /* touch the pages before timing */
  memset(recv, 0, max_elems * sizeof(float));
  int* recvcounts = malloc((size_t)nranks * sizeof(int));

  FILE* json = NULL;
  int json_first = 1;
  if (rank == 0) {
    char name[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(name, &len);
    printf(
        "# ompi_collectives: %d ranks on %s, float sum, warmup %d, iters %d, runs %d, "
        "check %d\n",
        nranks, name, warmup, iters, runs, check);
    if (json_path) {
      json = fopen(json_path, "w");
      if (!json) {
        perror(json_path);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      fprintf(json,
              "{\"tool\": \"ompi_collectives\", \"ranks\": %d, \"warmup\": %d, "
              "\"iters\": %d, \"runs\": %d, \"results\": [",
              nranks, warmup, iters, runs);
    }
  }

  for (int op = OP_ALLGATHER; op <= OP_REDUCE_SCATTER_V; op <<= 1) {
    if (!(ops & op)) continue;
    if (rank == 0) {
      printf("#\n# %s\n", op_name(op));
      printf("# %12s %12s %6s %6s %12s %8s %8s %7s\n", "size", "count", "type", "redop", "time(us)",
             "algbw", "busbw", "#wrong");
      printf("# %12s %12s %6s %6s %12s %8s %8s %7s\n", "(B)", "(elements)", "", "", "", "(GB/s)",
             "(GB/s)", "");
    }
    int64_t last = -1;
    for (double s = (double)minbytes; s <= (double)maxbytes * 1.0000001; s *= factor) {
      /* All-reduce takes any count; the others need the array to split evenly over ranks. */
      size_t count = op == OP_ALLREDUCE ? (size_t)((int64_t)s / (int64_t)sizeof(float))
                                        : (size_t)((int64_t)s / (int64_t)unit);
      size_t bytes = op == OP_ALLREDUCE ? count * sizeof(float) : count * unit;
      if ((int64_t)bytes == last) continue;
      last = (int64_t)bytes;
      for (int r = 0; r < nranks; ++r) recvcounts[r] = (int)count;
      fill_input(op, rank, count, nranks, send);
      if (count > 0) run_op(op, count, send, recv, recvcounts, warmup);
      double slowest = 0; /* fastest run of the slowest rank's average */
      for (int run = 0; run < runs; ++run) {
        MPI_Barrier(MPI_COMM_WORLD);
        double elapsed = count > 0 ? run_op(op, count, send, recv, recvcounts, iters) : 0.0;
        double mine = elapsed / iters, run_max = 0;
        MPI_Reduce(&mine, &run_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (run == 0 || run_max < slowest) slowest = run_max;
      }
      long long wrong = 0, all_wrong = 0;
      if (check && count > 0) {
        run_op(op, count, send, recv, recvcounts, 1);
        wrong = count_wrong(op, rank, count, nranks, recv);
      }
      MPI_Reduce(&wrong, &all_wrong, 1, MPI_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
      if (rank == 0) {
        double algbw = slowest > 0 ? (double)bytes / slowest / 1e9 : 0.0;
        double busfactor =
            op == OP_ALLREDUCE ? 2.0 * (nranks - 1) / nranks : (double)(nranks - 1) / nranks;
        double busbw = algbw * busfactor;
        char wrong_text[32];
        if (check)
          snprintf(wrong_text, sizeof wrong_text, "%lld", all_wrong);
        else
          snprintf(wrong_text, sizeof wrong_text, "N/A");
        printf("  %12zu %12zu %6s %6s %12.2f %8.3f %8.3f %7s\n", bytes, count, "float", "sum",
               slowest * 1e6, algbw, busbw, wrong_text);
        fflush(stdout);
        if (json) {
          fprintf(json,
                  "%s\n  {\"op\": \"%s\", \"size\": %zu, \"count\": %zu, \"type\": \"float\", "
                  "\"redop\": \"sum\", \"time_us\": %.3f, \"algbw\": %.4f, \"busbw\": %.4f, "
                  "\"wrong\": %lld}",
                  json_first ? "" : ",", op_name(op), bytes, count, slowest * 1e6, algbw, busbw,
                  check ? all_wrong : -1);
          json_first = 0;
        }
      }
    }
  }
  if (json) {
    fprintf(json, "\n]}\n");
    fclose(json);
  }
  free(send);
  free(recv);
  free(recvcounts);
  MPI_Finalize();
  return 0;
}
