#pragma once
// Soft checks for the rank programs of the multi-rank tests (comm_worker, engine_worker): a
// failed check is counted and its message printed (the first few), and the rank exits
// non-zero at the end, after finishing the collectives every other rank is still running.
#include <cstdio>

#include <fmt/format.h>

inline int g_failures = 0;

#define EXPECT_OR_COUNT(cond, ...)                                                               \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      ++g_failures;                                                                              \
      if (g_failures < 30) std::fprintf(stderr, "FAIL: %s\n", fmt::format(__VA_ARGS__).c_str()); \
    }                                                                                            \
  } while (0)
