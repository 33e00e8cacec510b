// The C++ tests' one assertion: EXPECT(cond) counts a pass or prints and counts a failure, so
// a test reports every failed check rather than stopping at the first. main() ends with
// `return expect_summary();`.
#pragma once

#include <cstdio>

namespace lsq_fast_test {
inline int passed = 0;
inline int failed = 0;

inline int expect_summary() {
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
}  // namespace lsq_fast_test

#define EXPECT(cond)                                                  \
  do {                                                                \
    if (cond) {                                                       \
      ++lsq_fast_test::passed;                                        \
    } else {                                                          \
      ++lsq_fast_test::failed;                                        \
      std::printf("  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                 \
  } while (0)
