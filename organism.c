// organism.c: the embedded planted-mechanism model (not built yet).
#include "bt.h"

int cmd_make_organism(int argc, char **argv) { return not_built(argc, argv); }
