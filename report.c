// report.c: SVG figures and the markdown report (not built yet).
#include "bt.h"

int cmd_make_report(int argc, char **argv) { return not_built(argc, argv); }
