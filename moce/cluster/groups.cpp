// groups.cpp: the class -> group table of `moce cluster --groups`.
#include "moce/cluster/groups.h"

#include <algorithm>
#include <fstream>
#include <map>

#include "engine/error.h"

namespace moce::cluster {

namespace {

std::vector<std::string> split_tabs(std::string line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();  // a file written on Windows
  std::vector<std::string> fields;
  size_t from = 0;
  for (size_t tab; (tab = line.find('\t', from)) != std::string::npos; from = tab + 1)
    fields.push_back(line.substr(from, tab - from));
  fields.push_back(line.substr(from));
  return fields;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

ClassGroups read_class_groups(const std::string& path, const std::string& column,
                              const std::vector<std::string>& classes) {
  std::ifstream f(path);
  ENG_CHECK(f.good(), "--groups {}: cannot be read", path);
  std::string line;
  ENG_CHECK(std::getline(f, line) && !line.empty(), "--groups {}: is empty (a header line is expected)", path);
  const std::vector<std::string> header = split_tabs(line);
  const auto col_it = std::find(header.begin(), header.end(), column);
  ENG_CHECK(col_it != header.end(), "--groups {}: no column '{}' in its header (columns: {})", path, column,
            joined(header));
  const size_t col = size_t(col_it - header.begin());
  ENG_CHECK(col > 0, "--groups {}: column '{}' is the first one, which holds the class names", path, column);
  std::map<std::string, std::string> group_of;
  for (int64_t line_no = 2; std::getline(f, line); line_no++) {
    if (line.empty() || line == "\r") continue;
    const std::vector<std::string> fields = split_tabs(line);
    ENG_CHECK(fields.size() > col, "--groups {}: line {} has {} fields, column '{}' is field {}", path, line_no,
              fields.size(), column, col + 1);
    ENG_CHECK(group_of.emplace(fields[0], fields[col]).second, "--groups {}: class '{}' is listed twice (line {})", path,
              fields[0], line_no);
  }
  ClassGroups out;
  out.file = path;
  out.column = column;
  for (const std::string& cls : classes) {
    auto it = group_of.find(cls);
    ENG_CHECK(it != group_of.end(), "--groups {}: class '{}' of the data set is not in its first column", path, cls);
    out.names.push_back(it->second);
  }
  std::vector<std::string> per_class = out.names;
  std::sort(out.names.begin(), out.names.end());
  out.names.erase(std::unique(out.names.begin(), out.names.end()), out.names.end());
  for (const std::string& g : per_class)
    out.group_of_class.push_back(int64_t(std::lower_bound(out.names.begin(), out.names.end(), g) - out.names.begin()));
  return out;
}

}  // namespace moce::cluster
