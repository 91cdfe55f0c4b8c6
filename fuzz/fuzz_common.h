// fuzz_common.h: what every target checks about a refusal, and the scratch files for readers that take a path.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>

#include "engine/error.h"

namespace fuzz {

// A finding: print what broke and abort, so libFuzzer keeps the input as a crash artifact.
[[noreturn]] inline void fail(const char* target, const std::string& what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_%s: %s: %s\n", target, what.c_str(), detail.c_str());
  std::abort();
}

// A refusal must be an eng::Error with a one-line, non-empty message that starts with `prefix` (the file name or
// flag it is about; "" = any start).
inline void check_refusal(const char* target, const eng::Error& e, const std::string& prefix) {
  const std::string msg = e.what();
  if (msg.empty()) fail(target, "empty error message", "");
  if (msg.find('\n') != std::string::npos) fail(target, "error message spans several lines", msg);
  if (!prefix.empty() && msg.find(prefix) == std::string::npos) fail(target, "error message does not name " + prefix, msg);
}

// Runs `body`; an eng::Error is checked as a refusal, any other exception escaping is a finding.
template <class F>
void run_checked(const char* target, const std::string& prefix, F&& body) {
  try {
    body();
  } catch (const eng::Error& e) {
    check_refusal(target, e, prefix);
  } catch (const std::exception& e) {
    fail(target, "an exception other than eng::Error escaped", e.what());
  } catch (...) {
    fail(target, "a non-std exception escaped", "");
  }
}

// A private folder for the readers that take a path, made once per process (under $TMPDIR, else /tmp) and
// removed at exit.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/moce-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) fail("common", "cannot make a scratch folder", tmpl);
    static std::string keep = tmpl;
    std::atexit([] { std::system(("rm -rf '" + keep + "'").c_str()); });
    return tmpl;
  }();
  return dir;
}

inline std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!f.good()) fail("common", "cannot write a scratch file", path);
  return path;
}

inline void remove_scratch(const std::string& name) { ::unlink((scratch_dir() + "/" + name).c_str()); }

}  // namespace fuzz
