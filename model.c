// model.c: safetensors loader and the batched forward pass (not built yet).
#include "bt.h"

int cmd_model_info(int argc, char **argv) { return not_built(argc, argv); }
int cmd_forward(int argc, char **argv) { return not_built(argc, argv); }
int cmd_generate_ids(int argc, char **argv) { return not_built(argc, argv); }
int cmd_make_bench_model(int argc, char **argv) { return not_built(argc, argv); }
int cmd_bench(int argc, char **argv) { return not_built(argc, argv); }
