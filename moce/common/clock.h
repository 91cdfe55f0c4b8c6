// clock.h: wall-clock seconds for the timings that progress lines and reports show (never for results).
#pragma once
#include <chrono>

namespace moce {

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace moce
