// tests/test_attrib.c: heads in the ablation design (attribution patching scores every head and a
// design may ablate some): layer sets with heads written and read back, shape-matched random
// heads, the masks the conditions use. The scan itself is tested on the organism (tests/cli_attrib.sh).
#include "test.h"

#include <stdlib.h>

static int has_head(const LayerSet *s, int layer, int head) {
    for (int i = 0; i < s->n_attn_heads; i++)
        if (s->attn_heads[2 * i] == layer && s->attn_heads[2 * i + 1] == head) return 1;
    return 0;
}

static void t_layer_set_heads_round_trip(void) {
    int attn[] = {1}, mlp[] = {2, 3}, heads[] = {1, 0, 3, 2};
    LayerSet set = {.kind = ABLATE_ZERO, .attn_layers = attn, .n_attn = 1, .mlp_layers = mlp, .n_mlp = 2,
                    .attn_heads = heads, .n_attn_heads = 2};
    Buf b = {0};
    layer_set_json(&b, &set);
    CHECKF(strstr(b.data, "\"attn_heads\": [[1, 0], [3, 2]]"), "%s", b.data);
    char path[1200];
    snprintf(path, sizeof path, "%s/set.json", test_tmpdir());
    Err err = {0};
    CHECK(write_file_atomic(path, b.data, b.len, &err) == 0);
    LayerSet back;
    CHECKF(layer_set_read(path, 4, &back, &err) == 0, "%s", err.msg);
    CHECK(back.n_attn == 1 && back.n_mlp == 2 && back.n_attn_heads == 2);
    CHECK(has_head(&back, 1, 0) && has_head(&back, 3, 2));
    layer_set_free(&back);
    buf_free(&b);
    // A set without heads writes no "attn_heads" (files read as before) and reads back without them.
    set.n_attn_heads = 0;
    layer_set_json(&b, &set);
    CHECK(!strstr(b.data, "attn_heads"));
    CHECK(write_file_atomic(path, b.data, b.len, &err) == 0);
    CHECK(layer_set_read(path, 4, &back, &err) == 0 && back.n_attn_heads == 0 && back.attn_heads == NULL);
    layer_set_free(&back);
    buf_free(&b);
    // Bad heads name the file and line.
    const char *bad[] = {"{\"attn_layers\": [], \"mlp_layers\": [],\n\"attn_heads\": [[4, 0]]}",
                         "{\"attn_layers\": [], \"mlp_layers\": [],\n\"attn_heads\": [[1]]}",
                         "{\"attn_layers\": [], \"mlp_layers\": [],\n\"attn_heads\": 3}"};
    for (int i = 0; i < 3; i++) {
        CHECK(write_file_atomic(path, bad[i], strlen(bad[i]), &err) == 0);
        memset(&err, 0, sizeof err);
        CHECK(layer_set_read(path, 4, &back, &err) == -1 && err.code == EXIT_BAD_INPUT);
        CHECKF(strstr(err.msg, "set.json:2:") && strstr(err.msg, "attn_heads"), "%s", err.msg);
    }
}

static void t_random_heads_shape_matched(void) {
    int attn[] = {1}, mlp[] = {2}, heads[] = {1, 0, 2, 3};
    LayerSet with = {.kind = ABLATE_ZERO, .attn_layers = attn, .n_attn = 1, .mlp_layers = mlp, .n_mlp = 1,
                     .attn_heads = heads, .n_attn_heads = 2};
    LayerSet without = with;
    without.n_attn_heads = 0;
    enum { DRAWS = 20, L = 4, H = 4 };
    LayerSet a[DRAWS], b[DRAWS];
    Err err = {0};
    CHECK(draw_random_layers(&with, L, H, 1234, DRAWS, a, &err) == 0);
    CHECK(draw_random_layers(&without, L, H, 1234, DRAWS, b, &err) == 0);
    for (int d = 0; d < DRAWS; d++) {
        CHECK(a[d].n_attn_heads == 2 && !has_head(&a[d], 1, 0) && !has_head(&a[d], 2, 3));
        int first = a[d].attn_heads[0] * H + a[d].attn_heads[1], second = a[d].attn_heads[2] * H + a[d].attn_heads[3];
        CHECK(first < second); // sorted, distinct
        CHECK(b[d].n_attn_heads == 0 && b[d].attn_heads == NULL);
        for (int e = 0; e < d; e++) // distinct draws while there are enough (3 x 3 x C(14, 2) here)
            CHECK(!(a[e].attn_layers[0] == a[d].attn_layers[0] && a[e].mlp_layers[0] == a[d].mlp_layers[0] &&
                    a[e].attn_heads[0] == a[d].attn_heads[0] && a[e].attn_heads[1] == a[d].attn_heads[1] &&
                    a[e].attn_heads[2] == a[d].attn_heads[2] && a[e].attn_heads[3] == a[d].attn_heads[3]));
    }
    for (int d = 0; d < DRAWS; d++) layer_set_free(&a[d]), layer_set_free(&b[d]);
    // Heads are drawn after the layers from the same stream: on a model with layers enough that no draw
    // repeats, the layers are those drawn for the set without heads (existing designs draw as before).
    CHECK(draw_random_layers(&with, 28, 12, 1234, 3, a, &err) == 0);
    CHECK(draw_random_layers(&without, 28, 12, 1234, 3, b, &err) == 0);
    for (int d = 0; d < 3; d++) {
        CHECK(a[d].attn_layers[0] == b[d].attn_layers[0] && a[d].mlp_layers[0] == b[d].mlp_layers[0]);
        layer_set_free(&a[d]), layer_set_free(&b[d]);
    }
    // Every head but one targeted: the one left is drawn each time; none left is an error.
    int *all = xmalloc(2 * L * H * sizeof *all);
    for (int k = 0; k < L * H; k++) all[2 * k] = k / H, all[2 * k + 1] = k % H;
    LayerSet most = {.kind = ABLATE_ZERO, .attn_heads = all + 2, .n_attn_heads = L * H - 1};
    CHECK(draw_random_layers(&most, L, H, 7, 1, a, &err) == -1 && strstr(err.msg, "heads outside the targeted ones"));
    LayerSet one = {.kind = ABLATE_ZERO, .attn_heads = all, .n_attn_heads = 1};
    CHECK(draw_random_layers(&one, L, H, 7, 3, a, &err) == 0 && a[2].n_attn_heads == 1 && !has_head(&a[2], 0, 0));
    for (int d = 0; d < 3; d++) layer_set_free(&a[d]);
    free(all);
}

static void t_layer_set_mask(void) {
    ModelConfig mc = {.n_layers = 3, .n_heads = 4, .head_dim = 8, .hidden_size = 32};
    int attn[] = {2}, heads[] = {1, 3, 0, 0};
    LayerSet set = {.attn_layers = attn, .n_attn = 1, .attn_heads = heads, .n_attn_heads = 2};
    AblationMask mask;
    Err err = {0};
    CHECK(layer_set_mask(&set, &mc, &mask, &err) == 0);
    CHECK(mask.attn[2] && !mask.attn[0] && !mask.mlp[0] && !mask.mlp[2] && mask.head);
    for (int k = 0; k < 12; k++) CHECK(mask.head[k] == (k == 1 * 4 + 3 || k == 0));
    ablation_mask_free(&mask);
    CHECK(mask.attn == NULL && mask.head == NULL);
    set.n_attn_heads = 0; // no heads: no head mask, as before
    CHECK(layer_set_mask(&set, &mc, &mask, &err) == 0 && mask.head == NULL);
    ablation_mask_free(&mask);
    heads[1] = 4; // head 1.4 of a model with 4 heads per layer
    set.n_attn_heads = 2;
    CHECK(layer_set_mask(&set, &mc, &mask, &err) == -1 && err.code == EXIT_BAD_INPUT && strstr(err.msg, "head 1.4"));
    CHECK(mask.attn == NULL);
}

const TestCase tests_attrib[] = {
    {"attrib: layer sets with heads written and read back", t_layer_set_heads_round_trip},
    {"attrib: random heads shape-matched, none selected, layers as without heads", t_random_heads_shape_matched},
    {"attrib: a set's ablation mask, heads included", t_layer_set_mask},
    {0, 0},
};
