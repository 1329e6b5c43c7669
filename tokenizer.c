// tokenizer.c: Hugging Face tokenizer.json byte-level BPE (not built yet).
#include "bt.h"

int cmd_tokenize(int argc, char **argv) { return not_built(argc, argv); }
int cmd_detokenize(int argc, char **argv) { return not_built(argc, argv); }
