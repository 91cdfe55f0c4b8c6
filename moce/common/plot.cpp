// plot.cpp: rasterises a line chart or a heatmap into an RGB buffer and writes it as PNG.
#include "moce/common/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "data/image.h"
#include "engine/error.h"

namespace moce {

namespace {

// The 3x5 pixel font: rows top to bottom, 3 bits each (MSB = left); lower case is drawn as upper case, except
// 'e', the small exponent sign of tick labels (rasterise_text passes an 'e' that follows no digit as 'E').
int glyph(char c, int row) {
  static const char* chars = "0123456789.-e+ABCDEFGHIJKLMNOPQRSTUVWXYZ:=%/(),_#";
  static const int rows[][5] = {
      {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7},
      {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}, {0, 0, 0, 0, 2}, {0, 0, 7, 0, 0},
      {0, 7, 5, 6, 7}, {0, 2, 7, 2, 0},
      {2, 5, 7, 5, 5}, {6, 5, 6, 5, 6}, {3, 4, 4, 4, 3}, {6, 5, 5, 5, 6}, {7, 4, 6, 4, 7}, {7, 4, 6, 4, 4},
      {3, 4, 5, 5, 3}, {5, 5, 7, 5, 5}, {7, 2, 2, 2, 7}, {1, 1, 1, 5, 2}, {5, 5, 6, 5, 5}, {4, 4, 4, 4, 7},
      {5, 7, 7, 5, 5}, {6, 5, 5, 5, 5}, {2, 5, 5, 5, 2}, {6, 5, 6, 4, 4}, {2, 5, 5, 6, 3}, {6, 5, 6, 5, 5},
      {3, 4, 2, 1, 6}, {7, 2, 2, 2, 2}, {5, 5, 5, 5, 7}, {5, 5, 5, 5, 2}, {5, 5, 7, 7, 5}, {5, 5, 2, 5, 5},
      {5, 5, 2, 2, 2}, {7, 1, 2, 4, 7},
      {0, 2, 0, 2, 0}, {0, 7, 0, 7, 0}, {5, 1, 2, 4, 5}, {1, 1, 2, 4, 4}, {1, 2, 2, 2, 1}, {4, 2, 2, 2, 4},
      {0, 0, 0, 2, 4}, {0, 0, 0, 0, 7}, {5, 7, 5, 7, 5}};
  if (c != 'e' && c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  for (int i = 0; chars[i]; i++)
    if (chars[i] == c) return rows[i][row];
  return 0;
}

// Sets the pixels of `s` in the font, each font pixel a scale x scale block, clipped to w x h.
void rasterise_text(uint8_t* px, int w, int h, int x, int y, const std::string& s, int scale, uint8_t r, uint8_t g,
                    uint8_t b) {
  char prev = ' ';
  for (char c0 : s) {
    // 'e' is the exponent sign only right after a number ("1.5e-03"); in words it is a letter like the others.
    const char c = (c0 == 'e' && !((prev >= '0' && prev <= '9') || prev == '.')) ? 'E' : c0;
    prev = c0;
    for (int row = 0; row < 5; row++)
      for (int col = 0; col < 3; col++)
        if (glyph(c, row) & (4 >> col))
          for (int a = 0; a < scale; a++)
            for (int bb = 0; bb < scale; bb++) {
              const int px_x = x + col * scale + a, px_y = y + row * scale + bb;
              if (px_x < 0 || px_y < 0 || px_x >= w || px_y >= h) continue;
              uint8_t* p = px + (size_t(px_y) * size_t(w) + size_t(px_x)) * 3;
              p[0] = r, p[1] = g, p[2] = b;
            }
    x += 4 * scale;
  }
}

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * size_t(h_) * 3, 255) {}
  void set(int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t* p = &px[(size_t(y) * size_t(w) + size_t(x)) * 3];
    p[0] = r, p[1] = g, p[2] = b;
  }
  void line(double x0, double y0, double x1, double y1, uint8_t r, uint8_t g, uint8_t b, int thick = 1) {
    int n = int(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int i = 0; i <= n; i++) {
      double t = double(i) / n;
      int x = int(std::lround(x0 + t * (x1 - x0))), y = int(std::lround(y0 + t * (y1 - y0)));
      for (int dx = 0; dx < thick; dx++)
        for (int dy = 0; dy < thick; dy++) set(x + dx, y + dy, r, g, b);
    }
  }
  void text(int x, int y, const std::string& s, int scale = 2) { rasterise_text(px.data(), w, h, x, y, s, scale, 60, 60, 60); }
};

}  // namespace

void draw_text(data::Image& image, int x, int y, const std::string& text, int scale, uint8_t r, uint8_t g, uint8_t b) {
  ENG_CHECK(int64_t(image.pixels.size()) == image.width * image.height * 3, "draw_text: the image has {} bytes for {}x{}",
            image.pixels.size(), image.width, image.height);
  rasterise_text(image.pixels.data(), int(image.width), int(image.height), x, y, text, scale, r, g, b);
}

int text_width(const std::string& text, int scale) { return int(text.size()) * 4 * scale; }

namespace {

std::string tick_label(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) < 1e-3 || std::fabs(v) >= 1e5))
    std::snprintf(buf, sizeof buf, "%.1e", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

}  // namespace

void write_line_plot(const std::string& path, const std::vector<Series>& series, int width, int height) {
  write_line_plot(path, series, PlotText{}, width, height);
}

void series_colour(size_t i, Series& s) {
  static const unsigned char tab10[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                                             {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
                                             {188, 189, 34},  {23, 190, 207}};
  s.r = tab10[i % 10][0], s.g = tab10[i % 10][1], s.b = tab10[i % 10][2];
}

void write_line_plot(const std::string& path, const std::vector<Series>& series, const PlotText& text, int width,
                     int height) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); i++) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
    }
  ENG_CHECK(std::isfinite(xmin), "{}: nothing to plot", path);
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + 1;
  double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  Canvas c(width, height);
  const bool titled = !text.title.empty() || !text.y_label.empty();
  const int left = 90, right = 20, top = titled ? 44 : 20, bottom = text.x_label.empty() ? 40 : 62;
  auto X = [&](double x) { return left + (x - xmin) / (xmax - xmin) * (width - left - right); };
  auto Y = [&](double y) { return height - bottom - (y - ymin) / (ymax - ymin) * (height - top - bottom); };
  for (int k = 0; k <= 5; k++) {  // grid and tick labels
    double yv = ymin + (ymax - ymin) * k / 5, xv = xmin + (xmax - xmin) * k / 5;
    c.line(left, Y(yv), width - right, Y(yv), 225, 225, 225);
    c.line(X(xv), top, X(xv), height - bottom, 225, 225, 225);
    c.text(4, int(Y(yv)) - 5, tick_label(yv));
    std::string xl = tick_label(xv);
    c.text(int(X(xv)) - int(xl.size()) * 4, height - bottom + 8, xl);
  }
  c.line(left, top, left, height - bottom, 0, 0, 0);
  c.line(left, height - bottom, width - right, height - bottom, 0, 0, 0);
  if (!text.title.empty()) c.text((width - text_width(text.title, 2)) / 2, 6, text.title);
  if (!text.y_label.empty()) c.text(4, top - 16, text.y_label);
  if (!text.x_label.empty())
    c.text(left + (width - left - right - text_width(text.x_label, 2)) / 2, height - bottom + 30, text.x_label);
  for (const auto& s : series) {
    bool have = false;
    double px = 0, py = 0;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); i++) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      double qx = X(s.x[i]), qy = Y(s.y[i]);
      if (have) c.line(px, py, qx, qy, s.r, s.g, s.b, 2);
      px = qx, py = qy, have = true;
    }
  }
  // The legend last, so no line crosses it.
  int legend_y = top + 6;
  for (const auto& s : series) {
    if (s.label.empty()) continue;
    const int x = width - right - 6 - text_width(s.label, 2) - 22;
    c.line(x, legend_y + 5, x + 16, legend_y + 5, s.r, s.g, s.b, 2);
    rasterise_text(c.px.data(), c.w, c.h, x + 22, legend_y, s.label, 2, s.r, s.g, s.b);
    legend_y += 14;
  }
  data::Image img;
  img.width = width;
  img.height = height;
  img.pixels = std::move(c.px);
  data::write_png(path, img);
}

std::pair<int, int> write_heatmap_png(const std::string& path, const std::vector<double>& values, int64_t rows,
                                      int64_t cols, const std::vector<std::string>& row_labels,
                                      const std::vector<std::string>& col_labels, const std::string& title) {
  ENG_CHECK(rows > 0 && cols > 0, "{}: an empty heatmap ({} x {})", path, rows, cols);
  ENG_CHECK(int64_t(values.size()) == rows * cols, "{}: {} values for a {} x {} heatmap", path, values.size(), rows,
            cols);
  ENG_CHECK(row_labels.empty() || int64_t(row_labels.size()) == rows, "{}: {} row labels for {} rows", path,
            row_labels.size(), rows);
  ENG_CHECK(col_labels.empty() || int64_t(col_labels.size()) == cols, "{}: {} column labels for {} columns", path,
            col_labels.size(), cols);
  const int cell_w = int(std::clamp<int64_t>(640 / cols, 8, 32)), cell_h = int(std::clamp<int64_t>(800 / rows, 3, 16));
  const size_t max_chars = 16;
  auto cut = [&](const std::string& s) { return s.size() > max_chars ? s.substr(0, max_chars) : s; };
  const bool show_rows = !row_labels.empty() && cell_h >= 6;  // the font is 5 pixels tall
  int label_w = 0;
  if (show_rows)
    for (const auto& l : row_labels) label_w = std::max(label_w, text_width(cut(l), 1));
  int col_label_w = 0;
  for (const auto& l : col_labels) col_label_w = std::max(col_label_w, text_width(cut(l), 1));
  // Every k-th column label, so that labels never overlap.
  const int col_step = col_labels.empty() ? 0 : std::max(1, (col_label_w + 2 + cell_w - 1) / cell_w);
  const int pad = 6, title_h = 5 * 2 + 8, col_h = col_labels.empty() ? 0 : 5 + 4, bar_h = 10, bar_w = 200;
  const int left = pad + (show_rows ? label_w + 4 : 0), top = pad + title_h + col_h;
  const int grid_w = int(cols) * cell_w, grid_h = int(rows) * cell_h;
  const int width = std::max({left + grid_w + pad, pad + text_width(title, 2) + pad, pad + bar_w + 60});
  const int height = top + grid_h + pad + bar_h + 5 + 4 + pad;
  data::Image img;
  img.width = width;
  img.height = height;
  img.pixels.assign(size_t(width) * size_t(height) * 3, 255);
  auto put = [&](int x, int y, const uint8_t rgb[3]) {
    if (x >= 0 && y >= 0 && x < width && y < height)
      for (int ch = 0; ch < 3; ch++) img.pixels[(size_t(y) * size_t(width) + size_t(x)) * 3 + size_t(ch)] = rgb[ch];
  };
  // White to dark blue (8, 48, 107), linear in each channel: light cells are small shares.
  auto colour = [](double v, uint8_t rgb[3]) {
    if (!std::isfinite(v)) {
      rgb[0] = rgb[1] = rgb[2] = 160;
      return;
    }
    v = std::clamp(v, 0.0, 1.0);
    const double lo[3] = {255, 255, 255}, hi[3] = {8, 48, 107};
    for (int ch = 0; ch < 3; ch++) rgb[ch] = uint8_t(std::lround(lo[ch] + (hi[ch] - lo[ch]) * v));
  };
  draw_text(img, pad, pad, title, 2, 0, 0, 0);
  for (int64_t c = 0; c < cols && col_step > 0; c += col_step)
    draw_text(img, left + int(c) * cell_w + 1, pad + title_h, cut(col_labels[size_t(c)]), 1, 0, 0, 0);
  for (int64_t r = 0; r < rows; r++) {
    if (show_rows) draw_text(img, pad, top + int(r) * cell_h + (cell_h - 5) / 2, cut(row_labels[size_t(r)]), 1, 0, 0, 0);
    for (int64_t c = 0; c < cols; c++) {
      uint8_t rgb[3];
      colour(values[size_t(r * cols + c)], rgb);
      for (int y = 0; y < cell_h; y++)
        for (int x = 0; x < cell_w; x++) put(left + int(c) * cell_w + x, top + int(r) * cell_h + y, rgb);
    }
  }
  const uint8_t frame[3] = {0, 0, 0};
  for (int x = left - 1; x <= left + grid_w; x++) put(x, top - 1, frame), put(x, top + grid_h, frame);
  for (int y = top - 1; y <= top + grid_h; y++) put(left - 1, y, frame), put(left + grid_w, y, frame);
  const int bar_y = top + grid_h + pad;  // the colour bar: 0 at the left, 1 at the right
  for (int x = 0; x < bar_w; x++) {
    uint8_t rgb[3];
    colour(double(x) / double(bar_w - 1), rgb);
    for (int y = 0; y < bar_h; y++) put(pad + text_width("0", 1) + 3 + x, bar_y + y, rgb);
  }
  draw_text(img, pad, bar_y + (bar_h - 5) / 2, "0", 1, 0, 0, 0);
  draw_text(img, pad + text_width("0", 1) + 3 + bar_w + 3, bar_y + (bar_h - 5) / 2, "1 SHARE", 1, 0, 0, 0);
  data::write_png(path, img);
  return {width, height};
}

}  // namespace moce
