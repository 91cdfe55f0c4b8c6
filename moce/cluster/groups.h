// moce/cluster/groups.h: semantic groups of the classes (a TSV such as tiny-imagenet-32/splits.tsv: a header, the class
// folder name in the first column, a group per named column), what `moce cluster --groups` scores the clusters against.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moce::cluster {

struct ClassGroups {
  std::string file, column;
  std::vector<std::string> names;       // the distinct groups of the data set's classes, sorted
  std::vector<int64_t> group_of_class;  // per class of the data set (in its label order), the index into names
};

// Reads the group of every class in `classes` from `column` of the TSV at `path`. One-line errors naming the file: it
// cannot be read or is empty, no such column in its header, a line with too few fields, a class listed twice or
// missing from the file. Classes of the file that the data set lacks are ignored.
ClassGroups read_class_groups(const std::string& path, const std::string& column,
                              const std::vector<std::string>& classes);

}  // namespace moce::cluster
