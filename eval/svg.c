/* A tiny SVG writer (see svg.h). */
#include "svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void put(svg_doc *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(svg_doc *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvtc_put_textv(&d->w, fmt, ap);
    va_end(ap);
}

static void put_escaped(svg_doc *d, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': put(d, "&amp;"); break;
        case '<': put(d, "&lt;"); break;
        case '>': put(d, "&gt;"); break;
        default: kvtc_put_u8(&d->w, (uint8_t)*s);
        }
    }
}

void svg_open(svg_doc *d, double width, double height)
{
    kvtc_writer_init(&d->w);
    put(d,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
        "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
        "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        width, height, width, height);
}

kvtc_status svg_save(svg_doc *d, const char *path, kvtc_error *err)
{
    put(d, "</svg>\n");
    kvtc_status st = d->w.failed ? kvtc_fail(err, KVTC_E_NOMEM, "%s: out of memory", path)
                                 : kvtc_write_file_atomic(path, d->w.buf, d->w.len, err);
    svg_discard(d);
    return st;
}

void svg_discard(svg_doc *d) { kvtc_writer_free(&d->w); }

void svg_text(svg_doc *d, double x, double y, double size, const char *anchor, const char *color,
              const char *text)
{
    put(d, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"%s\" fill=\"%s\">", x,
        y, size, anchor, color);
    put_escaped(d, text);
    put(d, "</text>\n");
}

void svg_rect(svg_doc *d, double x, double y, double w, double h, const char *fill,
              const char *stroke)
{
    put(d, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\" stroke=\"%s\"/>\n",
        x, y, w, h, fill, stroke ? stroke : "none");
}

void svg_line(svg_doc *d, double x0, double y0, double x1, double y1, const char *color,
              double width, bool dashed)
{
    put(d, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" "
           "stroke-width=\"%.2f\"%s/>\n",
        x0, y0, x1, y1, color, width, dashed ? " stroke-dasharray=\"4 3\"" : "");
}

double svg_px(const svg_axes *a, double x)
{
    double f = a->log_x ? (log2(x) - log2(a->x0)) / (log2(a->x1) - log2(a->x0))
                        : (x - a->x0) / (a->x1 - a->x0);
    return a->x + f * a->w;
}

double svg_py(const svg_axes *a, double y)
{
    return a->y + a->h - (y - a->y0) / (a->y1 - a->y0) * a->h;
}

/* A step of 1, 2 or 5 times a power of ten giving about 5 ticks. */
static double nice_step(double span)
{
    double raw = span / 5, p = pow(10, floor(log10(raw)));
    return raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
}

void svg_axes_draw(svg_doc *d, const svg_axes *a, const char *title, const char *x_label,
                   const char *y_label)
{
    char buf[64];
    double bottom = a->y + a->h;
    double xs[64];
    size_t nx = 0;
    if (a->log_x)
        for (double v = exp2(ceil(log2(a->x0))); v <= a->x1 * 1.0001 && nx < 64; v *= 2)
            xs[nx++] = v;
    else
        for (double st = nice_step(a->x1 - a->x0), v = ceil(a->x0 / st) * st;
             v <= a->x1 + st * 1e-9 && nx < 64; v += st)
            xs[nx++] = v;
    for (size_t i = 0; i < nx; i++) {
        double px = svg_px(a, xs[i]);
        svg_line(d, px, a->y, px, bottom, "#e4e4e4", 1, false);
        snprintf(buf, sizeof buf, "%g", xs[i]);
        svg_text(d, px, bottom + 14, 11, "middle", "#333", buf);
    }
    double st = nice_step(a->y1 - a->y0);
    for (double v = ceil(a->y0 / st) * st; v <= a->y1 + st * 1e-9; v += st) {
        double py = svg_py(a, v);
        svg_line(d, a->x, py, a->x + a->w, py, "#e4e4e4", 1, false);
        snprintf(buf, sizeof buf, "%g", fabs(v) < st * 1e-9 ? 0.0 : v);
        svg_text(d, a->x - 5, py + 4, 11, "end", "#333", buf);
    }
    svg_rect(d, a->x, a->y, a->w, a->h, "none", "#888");
    svg_text(d, a->x + a->w / 2, a->y - 10, 14, "middle", "#000", title);
    svg_text(d, a->x + a->w / 2, bottom + 32, 12, "middle", "#333", x_label);
    put(d, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" font-size=\"12\" "
           "text-anchor=\"middle\" fill=\"#333\">",
        a->x - 42, a->y + a->h / 2);
    put_escaped(d, y_label);
    put(d, "</text>\n");
}

void svg_series(svg_doc *d, const svg_axes *a, const double *x, const double *y, size_t n,
                const char *color, bool line)
{
    bool open = false;
    for (size_t i = 0; line && i < n; i++) {
        bool ok = isfinite(x[i]) && isfinite(y[i]) && (!a->log_x || x[i] > 0);
        if (!ok) {
            if (open)
                put(d, "\"/>\n");
            open = false;
            continue;
        }
        if (!open)
            put(d, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
        put(d, "%.1f,%.1f ", svg_px(a, x[i]), svg_py(a, y[i]));
        open = true;
    }
    if (open)
        put(d, "\"/>\n");
    for (size_t i = 0; i < n; i++)
        if (isfinite(x[i]) && isfinite(y[i]) && (!a->log_x || x[i] > 0))
            put(d, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", svg_px(a, x[i]),
                svg_py(a, y[i]), color);
}
