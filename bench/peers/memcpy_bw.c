/* Single-core memcpy bandwidth: the ceiling of any copy a rank makes (shm's single copy
 * through CMA, a reduction's read-modify-write, the re-arrangement of a hierarchical
 * all-gather). GB/s = bytes copied per second / 1e9 (each byte is read once and written
 * once, so the memory system carries at least twice that).
 *
 * usage: memcpy_bw [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-t SECONDS] [-j FILE]
 *   defaults -b 1M -e 256M -f 4 -t 0.3: each size is copied repeatedly for about t seconds,
 *   in 5 rounds after one untimed copy; the best and median rounds are printed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t parse_size(const char* text) {
  char* end = NULL;
  double v = strtod(text, &end);
  if (end == text || v <= 0) return -1;
  if (*end == 'k' || *end == 'K') {
    v *= 1024.0;
    ++end;
  } else if (*end == 'm' || *end == 'M') {
    v *= 1024.0 * 1024;
    ++end;
  } else if (*end == 'g' || *end == 'G') {
    v *= 1024.0 * 1024 * 1024;
    ++end;
  }
  if (*end == 'i') ++end;
  if (*end == 'B' || *end == 'b') ++end;
  return *end ? -1 : (int64_t)v;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  int64_t minbytes = 1 << 20, maxbytes = 256 << 20;
  double factor = 4, seconds = 0.3;
  const char* json_path = NULL;
  int c;
  while ((c = getopt(argc, argv, "b:e:f:t:j:h")) != -1) {
    switch (c) {
      case 'b':
        minbytes = parse_size(optarg);
        break;
      case 'e':
        maxbytes = parse_size(optarg);
        break;
      case 'f':
        factor = atof(optarg);
        break;
      case 't':
        seconds = atof(optarg);
        break;
      case 'j':
        json_path = optarg;
        break;
      default:
        fprintf(stderr,
                "usage: %s [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-t SECONDS] "
                "[-j FILE]\n",
                argv[0]);
        return 2;
    }
  }
  if (minbytes <= 0 || maxbytes < minbytes || factor <= 1.0 || seconds <= 0) {
    fprintf(stderr, "memcpy_bw: bad arguments\n");
    return 2;
  }
  char* src = malloc((size_t)maxbytes);
  char* dst = malloc((size_t)maxbytes);
  if (!src || !dst) {
    fprintf(stderr, "memcpy_bw: cannot allocate 2 x %lld bytes\n", (long long)maxbytes);
    return 1;
  }
  memset(src, 1, (size_t)maxbytes);
  memset(dst, 2, (size_t)maxbytes);
  FILE* json = json_path ? fopen(json_path, "w") : NULL;
  if (json_path && !json) {
    perror(json_path);
    return 1;
  }
  if (json) fprintf(json, "{\"tool\": \"memcpy_bw\", \"results\": [");
  printf("# single-core memcpy, GB/s = bytes copied / s / 1e9\n");
  printf("# %12s %8s %10s %10s\n", "size(B)", "copies", "best", "median");
  int first = 1;
  for (double s = (double)minbytes; s <= (double)maxbytes * 1.0000001; s *= factor) {
    size_t n = (size_t)s;
    memcpy(dst, src, n); /* untimed */
    double t0 = now();
    long reps = 0;
    do {
      memcpy(dst, src, n);
      ++reps;
      __asm__ volatile("" : : "r"(dst) : "memory");
    } while (now() - t0 < seconds / 5);
    double rounds[5];
    for (int r = 0; r < 5; ++r) {
      double t = now();
      for (long i = 0; i < reps; ++i) {
        memcpy(dst, src, n);
        __asm__ volatile("" : : "r"(dst) : "memory");
      }
      rounds[r] = (double)n * (double)reps / (now() - t) / 1e9;
    }
    qsort(rounds, 5, sizeof(double), cmp_double);
    printf("  %12zu %8ld %10.2f %10.2f\n", n, reps, rounds[4], rounds[2]);
    if (json)
      fprintf(json,
              "%s\n  {\"size\": %zu, \"copies\": %ld, \"best_gbps\": %.3f, "
              "\"median_gbps\": %.3f}",
              first ? "" : ",", n, reps, rounds[4], rounds[2]);
    first = 0;
  }
  if (json) {
    fprintf(json, "\n]}\n");
    fclose(json);
  }
  free(src);
  free(dst);
  return 0;
}
