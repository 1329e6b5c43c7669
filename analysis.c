// analysis.c: logit lens, ablation scan, condition comparison, formatting sweep (not built yet).
#include "bt.h"

int cmd_logit_lens(int argc, char **argv) { return not_built(argc, argv); }
int cmd_ablation_scan(int argc, char **argv) { return not_built(argc, argv); }
int cmd_compare_conditions(int argc, char **argv) { return not_built(argc, argv); }
int cmd_formatting_sweep(int argc, char **argv) { return not_built(argc, argv); }
