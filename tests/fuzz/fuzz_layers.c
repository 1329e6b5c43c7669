// tests/fuzz/fuzz_layers.c: the same bytes as a layer set (selected_layers.json,
// random_layers.json: layer_set_read) and as component_means.json (component_means_read),
// for a model of the organism's shape.
#include "fuzz.h"

#define FUZZ_N_LAYERS 4
#define FUZZ_HIDDEN 128

FUZZ_TARGET(layers) {
    const char *path = fuzz_write("run/" ART_SELECTED, data, n);
    LayerSet s;
    Err err = {0};
    if (layer_set_read(path, FUZZ_N_LAYERS, &s, &err) == 0) {
        for (int i = 0; i < s.n_attn; i++)
            fuzz_invariant(s.attn_layers[i] >= 0 && s.attn_layers[i] < FUZZ_N_LAYERS, "attn layer in range");
        for (int i = 0; i < s.n_mlp; i++)
            fuzz_invariant(s.mlp_layers[i] >= 0 && s.mlp_layers[i] < FUZZ_N_LAYERS, "mlp layer in range");
        layer_set_free(&s);
    } else {
        fuzz_invariant(strstr(err.msg, "selected_layers.json") != NULL, "an error names the file");
    }
    path = fuzz_write("run/" ART_MEANS, data, n);
    Run run = {0};
    snprintf(run.id, sizeof run.id, "fuzz");
    snprintf(run.dir, sizeof run.dir, "%.*s", (int)(strlen(path) - strlen("/" ART_MEANS)), path);
    ModelConfig mc = {0};
    mc.n_layers = FUZZ_N_LAYERS;
    mc.hidden_size = FUZZ_HIDDEN;
    float *attn = NULL, *mlp = NULL;
    if (component_means_read(&run, &mc, &attn, &mlp, &err) == 0) {
        fuzz_invariant(attn && mlp, "both means are read");
        free(attn);
        free(mlp);
    } else {
        fuzz_invariant(!attn && !mlp && strstr(err.msg, "component_means.json") != NULL,
                       "an error names the file, nothing is kept");
    }
    return 0;
}
