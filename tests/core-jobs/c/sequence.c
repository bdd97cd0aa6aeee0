/*
 * sequence.wasm N: the C twin of examples/sequence, through stdio's buffered FILE:
 * appends the lines 1 to N to out.txt in $RUNNER_OUTPUT_DIR, about 1 ms a line, saving
 * every 100 lines and when asked to stop. However often it is killed, out.txt ends up
 * holding 1..N once each, in order: the save flushes the FILE first.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner_job.h"

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 3000, next = 1;
    void *saved;
    size_t len;
    int code = runner_checkpoint_load(&saved, &len);
    if (code != RUNNER_OK && code != RUNNER_E_NONE) {
        fprintf(stderr, "cannot load: %s\n", runner_error());
        return 1;
    }
    if (saved != NULL && len == sizeof next) {
        memcpy(&next, saved, len);
    }
    free(saved);
    const char *dir = getenv("RUNNER_OUTPUT_DIR");
    if (dir == NULL) {
        fprintf(stderr, "no output directory: run with --output DIR::/out\n");
        return 1;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    FILE *out = fopen(path, "a");
    if (out == NULL) {
        perror(path);
        return 1;
    }
    for (; next <= n; next++) {
        fprintf(out, "%lu\n", next);
        bool stop = runner_should_stop();
        if (next % 100 == 0 || stop) {
            unsigned long after = next + 1;
            if (runner_checkpoint_save(&after, sizeof after) != RUNNER_OK) {
                fprintf(stderr, "cannot save: %s\n", runner_error());
                return 1;
            }
            if (stop) {
                runner_suspend();
            }
        }
        runner_wait(1000000);
    }
    return fclose(out) == 0 ? 0 : 1;
}
