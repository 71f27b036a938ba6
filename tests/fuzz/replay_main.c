/* Replays a corpus through a fuzz driver without libFuzzer, so that the drivers' invariants run in
 * every ordinary (gcc) build as ctest cases: `replay_<target> DIR|FILE...` feeds each regular file
 * of each directory (in name order, for reproducible output) and each named file to
 * LLVMFuzzerTestOneInput(). A crash or a failed invariant aborts the process. Finding no input at
 * all is an error too: an empty corpus would make the test pass without testing anything. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

/* Inputs beyond this are not seeds; libFuzzer's own default -max_len is 4096. */
#define REPLAY_MAX_INPUT (1024 * 1024)
#define REPLAY_PATH_MAX  4096

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    /* Exactly sized, never padded: AddressSanitizer must see a read one byte past the input. */
    uint8_t *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size > REPLAY_MAX_INPUT) {
        fprintf(stderr, "replay: %s: unreadable or larger than %d bytes\n", path, REPLAY_MAX_INPUT);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size ? size : 1);
    if (!buf || fread(buf, 1, size, f) != size) {
        fprintf(stderr, "replay: %s: read failed\n", path);
        goto out;
    }
    /* the last name printed is the input that crashed, if one does */
    fprintf(stderr, "replay: %s\n", path);
    LLVMFuzzerTestOneInput(buf, size);
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file of `dir`; returns the count, or -1 on error. */
static long run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    size_t cap = 0;
    long count = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **grown = realloc(names, ncap * sizeof *names);
            if (!grown)
                goto out;
            names = grown;
            cap = ncap;
        }
        if (!(names[n] = strdup(e->d_name)))
            goto out;
        n++;
    }
    qsort(names, n, sizeof *names, cmp_names);
    count = 0;
    for (size_t i = 0; i < n; i++) {
        char path[REPLAY_PATH_MAX];
        struct stat st;
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) {
            count = -1;
            goto out;
        }
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(path) != 0) {
            count = -1;
            goto out;
        }
        count++;
    }
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    closedir(d);
    return count;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR|FILE...\n", argv[0]);
        return 2;
    }
    long total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        long n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : (run_file(argv[i]) == 0 ? 1 : -1);
        if (n < 0)
            return 1;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    printf("replay: %ld inputs, no invariant violated\n", total);
    return 0;
}
