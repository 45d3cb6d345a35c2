// The machine's sgemm FLOP rate through OpenBLAS (the library the CPU model uses): the
// ceiling that `mics train` on the CPU is compared with (bench/cpu_train.sh).
// Usage: sgemm_rate [N=2048] [threads=0 (OpenBLAS default)] [reps=5]; prints the best GFLOP/s
// of an N x N x N sgemm.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int threads);

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 2048;
  const int threads = argc > 2 ? atoi(argv[2]) : 0;
  const int reps = argc > 3 ? atoi(argv[3]) : 5;
  if (threads > 0) openblas_set_num_threads(threads);
  float* a = malloc(sizeof(float) * (size_t)n * (size_t)n);
  float* b = malloc(sizeof(float) * (size_t)n * (size_t)n);
  float* c = malloc(sizeof(float) * (size_t)n * (size_t)n);
  if (!a || !b || !c) return 1;
  for (size_t i = 0; i < (size_t)n * (size_t)n; ++i) {
    a[i] = (float)(i % 7) * 0.1f;
    b[i] = (float)(i % 5) * 0.2f;
    c[i] = 0.0f;
  }
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // the first is a warm-up
    const double t0 = now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    const double t = now_s() - t0;
    if (r > 0 && t < best) best = t;
  }
  printf("{\"n\": %d, \"threads\": %d, \"seconds\": %.6f, \"gflops\": %.2f}\n", n, threads, best,
         2.0 * n * (double)n * n / best / 1e9);
  free(a);
  free(b);
  free(c);
  return 0;
}
