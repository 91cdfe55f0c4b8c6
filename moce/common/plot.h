// plot.h: a line chart written as PNG (loss curves), with no plotting library: axes, grid, tick labels in a
// built-in 3x5 pixel font, one or more series.
#pragma once
#include <string>
#include <vector>

namespace moce {

struct Series {
  std::vector<double> x, y;
  unsigned char r = 31, g = 119, b = 180;  // line colour
};

// Writes a width x height PNG (atomically, through data::write_png). Non-finite points are skipped.
void write_line_plot(const std::string& path, const std::vector<Series>& series, int width = 640, int height = 400);

}  // namespace moce
