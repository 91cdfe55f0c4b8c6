// error.h: the engine's one exception type and the check macro that builds its message.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace eng {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace eng

// ENG_CHECK(cond, "fmt {}", args...): throws eng::Error with a one-line message when cond is false.
#define ENG_CHECK(cond, ...)                                        \
  do {                                                              \
    if (!(cond)) throw ::eng::Error(::fmt::format(__VA_ARGS__));    \
  } while (0)
#define ENG_FAIL(...) throw ::eng::Error(::fmt::format(__VA_ARGS__))
