// organism.c: the embedded planted-mechanism model (not built yet).
#include "bt.h"

int cmd_make_organism(int argc, char **argv) { return not_built(argc, argv); }

int organism_write(const char *dir, Err *err) { return err_runtime(err, "%s: the organism is not built yet in this version of bt", dir); }
