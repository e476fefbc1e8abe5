/* A tiny SVG writer: a document, plot axes with ticks (linear or log2 x),
 * series of points and lines, rectangles and text. Enough for the harness's
 * charts without a plotting dependency. */
#ifndef KVTC_EVAL_SVG_H
#define KVTC_EVAL_SVG_H

#include "kvtc_internal.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct svg_doc {
    kvtc_writer w;
} svg_doc;

void svg_open(svg_doc *d, double width, double height);
/* Closes the document and writes it atomically to path. Frees the buffer. */
kvtc_status svg_save(svg_doc *d, const char *path, kvtc_error *err);
void svg_discard(svg_doc *d);

/* text-anchor: "start", "middle" or "end". */
void svg_text(svg_doc *d, double x, double y, double size, const char *anchor, const char *color,
              const char *text);
void svg_rect(svg_doc *d, double x, double y, double w, double h, const char *fill,
              const char *stroke);
void svg_line(svg_doc *d, double x0, double y0, double x1, double y1, const char *color,
              double width, bool dashed);

/* A plot area: its box in pixels and the data range it shows. */
typedef struct svg_axes {
    double x, y, w, h;       /* pixels, (x, y) the top-left corner */
    double x0, x1, y0, y1;   /* data range */
    bool log_x;              /* log2 x axis (x0 > 0) */
} svg_axes;

double svg_px(const svg_axes *a, double x);
double svg_py(const svg_axes *a, double y);
/* Frame, grid and tick labels (powers of two on a log axis), title and labels. */
void svg_axes_draw(svg_doc *d, const svg_axes *a, const char *title, const char *x_label,
                   const char *y_label);
/* Points (circles) and, when line is true, the polyline through them, in
 * order; non-finite points are skipped and break the line. */
void svg_series(svg_doc *d, const svg_axes *a, const double *x, const double *y, size_t n,
                const char *color, bool line);

#endif /* KVTC_EVAL_SVG_H */
