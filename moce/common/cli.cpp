// cli.cpp: the flag parser.
#include "moce/common/cli.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "engine/error.h"

namespace moce {

std::string printable_arg(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else out.push_back(c);
  }
  return out;
}

Args& Args::add(const std::string& name, const std::string& def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {def, help, false};
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {"", help, true};
  return *this;
}

const Args::Spec& Args::spec(const std::string& name) const {
  auto it = specs_.find(name);
  ENG_CHECK(it != specs_.end(), "internal: flag --{} was never declared", name);
  return it->second;
}

bool Args::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    ENG_CHECK(a.rfind("--", 0) == 0, "{}: unexpected argument '{}' (flags start with --; see --help)", command_,
              printable_arg(a));
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    auto it = specs_.find(name);
    ENG_CHECK(it != specs_.end(), "{}: unknown flag --{} (see --help)", command_, printable_arg(name));
    if (it->second.is_flag) {
      ENG_CHECK(!inline_value || value == "1" || value == "true" || value == "0" || value == "false",
                "{}: --{} is a switch; it takes no value", command_, name);
      value = (!inline_value || value == "1" || value == "true") ? "1" : "0";
    } else if (!inline_value) {
      ENG_CHECK(i + 1 < argc, "{}: --{} needs a value", command_, name);
      value = argv[++i];
    }
    values_[name] = value;
    given_[name] = true;
  }
  return true;
}

std::string Args::help() const {
  std::string h = "usage: moce " + command_ + " [flags]\n" + summary_ + "\n\nflags:\n";
  for (const auto& n : order_) {
    const Spec& s = specs_.at(n);
    std::string left = "  --" + n + (s.is_flag ? "" : " VALUE");
    if (left.size() < 28) left.resize(28, ' ');
    h += left + " " + s.help + (s.is_flag || s.def.empty() ? "" : " (default: " + s.def + ")") + "\n";
  }
  return h;
}

std::string Args::str(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(name);
  return it != values_.end() ? it->second : s.def;
}

int64_t Args::i64(const std::string& name) const {
  std::string v = str(name);
  try {
    size_t used = 0;
    long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  ENG_FAIL("{}: --{} expects an integer, got '{}'", command_, name, printable_arg(v));
}

double Args::f64(const std::string& name) const {
  const std::string v = str(name);
  // strtod, not stod: a value out of the double range must still be checked for what follows it ("1e555;x" is no
  // number at all; found by fuzz/fuzz_cli). Values are quoted through printable_arg: one line whatever they hold.
  const char* begin = v.c_str();
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(begin, &end);
  const bool whole = end != begin && *end == '\0';
  ENG_CHECK(whole, "{}: --{} expects a number, got '{}'", command_, name, printable_arg(v));
  ENG_CHECK(!(errno == ERANGE && std::fabs(x) > 1), "--{} {}: expected a finite number (this one is out of the double "
            "range)", name, printable_arg(v));
  // nan trains on nothing and inf overflows every schedule: no flag of ours means them.
  ENG_CHECK(std::isfinite(x), "--{} {}: expected a finite number", name, printable_arg(v));
  return x;
}

int64_t Args::i64_at_least(const std::string& name, int64_t min) const {
  const int64_t v = i64(name);
  check_at_least("--" + name, v, min);
  return v;
}

double Args::f64_at_least(const std::string& name, double min) const {
  const double v = f64(name);
  check_at_least("--" + name, v, min);
  return v;
}

double Args::f64_in(const std::string& name, double lo, double hi) const {
  const double v = f64(name);
  check_in("--" + name, v, lo, hi);
  return v;
}

std::vector<std::string> Args::given_names() const {
  std::vector<std::string> names;
  for (const auto& n : order_)
    if (given(n)) names.push_back(n);
  return names;
}

void check_at_least(const std::string& flag, int64_t value, int64_t min) {
  ENG_CHECK(value >= min, "{} {}: expected an integer >= {}", flag, value, min);
}

void check_at_least(const std::string& flag, double value, double min) {
  ENG_CHECK(std::isfinite(value) && value >= min, "{} {}: expected a finite number >= {}", flag, value, min);
}

void check_in(const std::string& flag, double value, double lo, double hi, bool lo_open, bool hi_open) {
  const bool above = lo_open ? value > lo : value >= lo;
  const bool below = hi_open ? value < hi : value <= hi;
  ENG_CHECK(std::isfinite(value) && above && below, "{} {}: expected a number in {}{}, {}{}", flag, value,
            lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
}

bool Args::on(const std::string& name) const {
  spec(name);
  auto it = values_.find(name);
  return it != values_.end() && it->second == "1";
}

std::vector<int64_t> parse_index_list(const std::string& text, const std::string& flag, const std::string& expected) {
  std::vector<int64_t> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ENG_CHECK(used == item.size() && !item.empty() && v >= 0, "{} {}: expected {}", flag, printable_arg(text),
              expected);
    values.push_back(v);
  }
  ENG_CHECK(!values.empty(), "{}: nothing given; expected {}", flag, expected);
  return values;
}

}  // namespace moce
