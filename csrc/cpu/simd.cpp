// Run-time selection of the CPU kernels' AVX2 paths (simd.h) and the cpu_simd op that reports or
// changes it (tests run every CPU kernel with and without AVX2 and compare both with the
// reference; benchmarks compare the two paths).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

#include "simd.h"

namespace specdec {
namespace {

int best_supported() {
#if SPECDEC_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return 1;
  }
#endif
  return 0;
}

int initial_level() {
  int level = best_supported();
  if (const char* env = std::getenv("SPECDEC_CPU_SIMD")) {
    if (env[0] == '0') level = 0;
  }
  return level;
}

std::atomic<int>& level_ref() {
  static std::atomic<int> level{initial_level()};
  return level;
}

// level < 0: report only. Otherwise set min(level, supported). Returns the level before the call.
int64_t cpu_simd(int64_t level) {
  const int before = level_ref().load();
  if (level >= 0) {
    const int64_t capped = std::min<int64_t>(level, best_supported());
    level_ref().store(static_cast<int>(capped));
  }
  return before;
}

}  // namespace

int simd_level() { return level_ref().load(std::memory_order_relaxed); }

TORCH_LIBRARY_IMPL(specdec, CatchAll, m) { m.impl("cpu_simd", &cpu_simd); }

}  // namespace specdec
