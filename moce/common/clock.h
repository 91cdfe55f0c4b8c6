// clock.h: wall-clock seconds for the timings that progress lines and reports show (never for results), and the cost
// of a piece of work as process CPU seconds (every thread's user + system time: the data loader's and OpenMP's count)
// beside its wall seconds.
#pragma once
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace moce {

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// User + system CPU seconds of this process so far, all threads.
inline double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct Cost {
  double cpu_seconds = 0, wall_seconds = 0;
  Cost operator+(const Cost& o) const { return {cpu_seconds + o.cpu_seconds, wall_seconds + o.wall_seconds}; }
};

// Started at construction; elapsed() is the cost since then.
class CostClock {
 public:
  CostClock() : wall_(std::chrono::steady_clock::now()), cpu_(process_cpu_seconds()) {}
  Cost elapsed() const { return {process_cpu_seconds() - cpu_, seconds_since(wall_)}; }

 private:
  std::chrono::steady_clock::time_point wall_;
  double cpu_;
};

// "42s", "3m07s", "1h05m"; "?" for a negative or non-finite time (an ETA not yet known).
inline std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace moce
