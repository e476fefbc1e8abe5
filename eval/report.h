/* What `kvtc eval` prints and writes: one JSON object per method, a markdown
 * report (tables, verdicts against issue #4's bars, the calibration's
 * explained variance and bit allocations) and an SVG chart of quality against
 * realized ratio. */
#ifndef KVTC_EVAL_REPORT_H
#define KVTC_EVAL_REPORT_H

#include "cli.h"
#include "kvtc.h"
#include "tasks.h"

typedef struct eval_setup {
    const char *model_path;
    const char *calib_path;
    const char *command; /* the command line, for the report */
    const eval_options *options;
    const kvtc_calibration *cal;
} eval_setup;

/* Method i's numbers as the members of the open JSON object. */
void eval_json_method(cli_json *j, const eval_results *r, uint32_t i);

/* The KVTC ratios the report and chart detail bit allocations for: those of
 * the run's kvtc methods, else 8, 16, 32, 64. Returns how many (<= 16). */
uint32_t eval_plan_ratios(const eval_results *r, double ratios[16]);

kvtc_status eval_write_report(const char *path, const eval_setup *s, const eval_results *r,
                              kvtc_error *err);
kvtc_status eval_write_chart(const char *path, const eval_setup *s, const eval_results *r,
                             kvtc_error *err);

#endif /* KVTC_EVAL_REPORT_H */
