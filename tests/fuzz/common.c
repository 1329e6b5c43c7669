// tests/fuzz/common.c: the scratch directory the targets write their inputs to.
#include "fuzz.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_MAX_FILES 16

static char dir[512];
static char *files[FUZZ_MAX_FILES]; // paths written so far, removed at exit
static int n_files;

static void fuzz_cleanup(void) {
    for (int i = n_files - 1; i >= 0; i--) remove(files[i]); // files, then the directories made for them
    rmdir(dir);
}

const char *fuzz_dir(void) {
    if (dir[0]) return dir;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/bt-fuzz-XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        perror(dir);
        abort();
    }
    atexit(fuzz_cleanup);
    return dir;
}

static const char *remember(const char *path) {
    for (int i = 0; i < n_files; i++)
        if (strcmp(files[i], path) == 0) return files[i];
    fuzz_invariant(n_files < FUZZ_MAX_FILES, "too many scratch files");
    files[n_files] = xstrdup(path);
    return files[n_files++];
}

const char *fuzz_write(const char *rel, const uint8_t *data, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), rel);
    for (char *slash = strchr(path + strlen(fuzz_dir()) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        if (mkdir(path, 0777) == 0) remember(path);
        *slash = '/';
    }
    const char *kept = remember(path);
    FILE *f = fopen(kept, "wb");
    fuzz_invariant(f != NULL, "cannot create a scratch file");
    if (n) fuzz_invariant(fwrite(data, 1, n, f) == n, "cannot write a scratch file");
    fclose(f);
    return kept;
}

void fuzz_invariant(int ok, const char *what) {
    if (ok) return;
    fprintf(stderr, "fuzz: invariant broken: %s\n", what);
    abort();
}
