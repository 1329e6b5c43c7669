// tests/fuzz/fuzz_safetensors.c: a model.safetensors (header and tensor table) through
// model_load, beside a valid config.json of a tiny Qwen2 shape; a file that loads has
// every tensor's first and last element read (they must lie inside the mapping).
#include "fuzz.h"

#include <stdio.h>

// hidden 8, 1 layer, 2 heads of 4 (1 KV head), MLP 16, vocab 16.
static const char tiny_config[] =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 8, \"num_hidden_layers\": 1, "
    "\"num_attention_heads\": 2,\n"
    " \"num_key_value_heads\": 1, \"intermediate_size\": 16, \"vocab_size\": 16, \"rms_norm_eps\": 1e-6,\n"
    " \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, \"eos_token_id\": 2}\n";

static volatile float sink; // keeps the reads

static void touch(const Tensor *t) {
    if (!t->data) return;
    size_t n = (size_t)t->rows * (size_t)t->cols;
    sink = tensor_at(t, 0) + tensor_at(t, n - 1);
}

FUZZ_TARGET(safetensors) {
    static const char *config_path;
    if (!config_path) config_path = fuzz_write("st/config.json", (const uint8_t *)tiny_config, strlen(tiny_config));
    const char *path = fuzz_write("st/model.safetensors", data, n);
    char dir[1024];
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(path, '/') - path), path);
    Model m;
    Err err = {0};
    if (model_load(&m, dir, &err)) {
        fuzz_invariant(err.code == EXIT_BAD_INPUT || err.code == EXIT_RUNTIME, "an error has a code");
        fuzz_invariant(strstr(err.msg, "model.safetensors") != NULL, "an error names the file");
        return 0;
    }
    touch(&m.embed);
    touch(&m.final_norm);
    touch(&m.lm_head);
    for (int l = 0; l < m.cfg.n_layers; l++) {
        const LayerWeights *w = &m.layers[l];
        const Tensor *all[] = {&w->attn_norm, &w->wq, &w->wk,       &w->wv,     &w->wo,   &w->bq,
                               &w->bk,        &w->bv, &w->mlp_norm, &w->w_gate, &w->w_up, &w->w_down};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) touch(all[k]);
    }
    model_free(&m);
    return 0;
}

// A valid model.safetensors for tiny_config (the seed the fuzzer starts from), with
// F32, BF16 and F16 tensors.
int fuzz_safetensors_seed(const char *path) {
    enum { D = 8, Q = 8, KV = 4, F = 16, V = 16 };
    struct { const char *name; int rows, cols; DType dtype;
    } spec[] = {
        {"model.embed_tokens.weight", V, D, DT_F32},
        {"model.layers.0.input_layernorm.weight", 1, D, DT_F32},
        {"model.layers.0.self_attn.q_proj.weight", Q, D, DT_BF16},
        {"model.layers.0.self_attn.k_proj.weight", KV, D, DT_F16},
        {"model.layers.0.self_attn.v_proj.weight", KV, D, DT_F32},
        {"model.layers.0.self_attn.q_proj.bias", 1, Q, DT_F32},
        {"model.layers.0.self_attn.k_proj.bias", 1, KV, DT_F32},
        {"model.layers.0.self_attn.v_proj.bias", 1, KV, DT_F32},
        {"model.layers.0.self_attn.o_proj.weight", D, Q, DT_F32},
        {"model.layers.0.post_attention_layernorm.weight", 1, D, DT_F32},
        {"model.layers.0.mlp.gate_proj.weight", F, D, DT_BF16},
        {"model.layers.0.mlp.up_proj.weight", F, D, DT_F32},
        {"model.layers.0.mlp.down_proj.weight", D, F, DT_F16},
        {"model.norm.weight", 1, D, DT_F32},
        {"lm_head.weight", V, D, DT_F32},
    };
    enum { N = sizeof spec / sizeof spec[0] };
    const char *names[N];
    Tensor tensors[N];
    static uint32_t zeros[V * F]; // every tensor's data: 0.0 in any of the three dtypes
    for (int i = 0; i < N; i++) {
        names[i] = spec[i].name;
        tensors[i] = (Tensor){.data = zeros, .dtype = spec[i].dtype, .rows = spec[i].rows, .cols = spec[i].cols};
    }
    Err err = {0};
    if (safetensors_write(path, names, tensors, N, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}
