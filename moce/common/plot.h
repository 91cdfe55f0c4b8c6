// plot.h: a line chart written as PNG (loss curves), with no plotting library: axes, grid, tick labels in a
// built-in 3x5 pixel font, one or more series; a heatmap of shares (routing: class x expert); and that font for
// titles on other pictures.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/image.h"

namespace moce {

struct Series {
  std::vector<double> x, y;
  unsigned char r = 31, g = 119, b = 180;  // line colour
  std::string label;                       // its legend entry ("" = none)
};

// The words around a chart: a title on top, the x axis title under the tick labels, the y axis title above the y axis.
struct PlotText {
  std::string title, x_label, y_label;
};

// Writes a width x height PNG (atomically, through data::write_png). Non-finite points are skipped. With `text`, the
// titles are drawn and every labelled series gets a legend entry (top right, in its colour).
void write_line_plot(const std::string& path, const std::vector<Series>& series, int width = 640, int height = 400);
void write_line_plot(const std::string& path, const std::vector<Series>& series, const PlotText& text, int width = 640,
                     int height = 400);
// The i-th of 10 distinct line colours (matplotlib's tab10), for charts with several series.
void series_colour(size_t i, Series& s);

// A heatmap of `values` (rows x cols, row-major) in [0, 1] (clamped; NaN drawn grey), white (0) to dark blue (1),
// written as PNG (atomically): a title on top, column labels above the cells and row labels at their left (each only
// when its cells are large enough for the font; long ones cut), and a colour bar from 0 to 1 below. Cells are sized to
// keep the picture within about 800 x 900 pixels (at least 8 x 3 each). Returns [width, height].
std::pair<int, int> write_heatmap_png(const std::string& path, const std::vector<double>& values, int64_t rows,
                                      int64_t cols, const std::vector<std::string>& row_labels,
                                      const std::vector<std::string>& col_labels, const std::string& title);

// Draws `text` into an RGB image in the built-in 3x5 pixel font (digits, A-Z with lower case drawn as upper case,
// . - + : = % / ( ) , _ #; anything else is a blank), each font pixel a scale x scale block, 4 * scale pixels a
// character, 5 * scale tall; clipped at the edges.
void draw_text(data::Image& image, int x, int y, const std::string& text, int scale, uint8_t r, uint8_t g, uint8_t b);
int text_width(const std::string& text, int scale);

}  // namespace moce
