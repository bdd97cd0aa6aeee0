/*
 * primes.wasm [LIMIT [SHARDS]]: the C twin of examples/primes. Counts the primes below
 * LIMIT by trial division, saves its place about once a second, and when stopped and
 * run again resumes and prints what an uninterrupted run prints:
 * `primes below LIMIT: COUNT`. With SHARDS it counts shard $JOB_COMPLETION_INDEX of
 * SHARDS equal parts of the range: `primes below LIMIT in shard I of SHARDS: COUNT`.
 *
 *   clang --target=wasm32-wasi -O2 -I guest-sdk/c -o c-primes.wasm examples/c-primes/primes.c
 *   runner c-primes.wasm 10000000
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner_job.h"

/* About 20 seconds on a 2-core machine of 2026. */
#define DEFAULT_LIMIT 70000000u

/* The state, saved as text: "primes 1 LIMIT INDEX SHARDS NEXT COUNT". */
struct state {
    uint64_t limit, index, shards; /* shards 0: the whole range */
    uint64_t next, count;
};

static bool is_prime(uint64_t n) {
    if (n < 4) {
        return n >= 2;
    }
    if (n % 2 == 0 || n % 3 == 0) {
        return false;
    }
    for (uint64_t d = 5; d * d <= n; d += 6) {
        if (n % d == 0 || n % (d + 2) == 0) {
            return false;
        }
    }
    return true;
}

static _Noreturn void fail(const char *message) {
    fprintf(stderr, "%s\n", message);
    exit(1);
}

/* A whole number argument or variable, or exit 1 naming it. */
static uint64_t number(const char *what, const char *text) {
    char *end;
    if (text[0] < '0' || text[0] > '9') {
        end = (char *)text;
    } else {
        errno = 0;
        unsigned long long value = strtoull(text, &end, 10);
        if (*end == '\0' && errno == 0) {
            return value;
        }
    }
    fprintf(stderr, "%s `%s` is not a whole number\n", what, text);
    exit(1);
}

static void save(const struct state *s) {
    char text[128];
    int len = snprintf(text, sizeof text, "primes 1 %" PRIu64 " %" PRIu64 " %" PRIu64
                       " %" PRIu64 " %" PRIu64, s->limit, s->index, s->shards, s->next,
                       s->count);
    if (runner_checkpoint_save(text, (size_t)len) != RUNNER_OK) {
        fprintf(stderr, "cannot save the count: %s\n", runner_error());
        exit(1);
    }
}

/* " in shard I of N", or "" for the whole range. */
static const char *describe(uint64_t index, uint64_t shards) {
    static char text[64];
    text[0] = '\0';
    if (shards > 0) {
        snprintf(text, sizeof text, " in shard %" PRIu64 " of %" PRIu64, index, shards);
    }
    return text;
}

int main(int argc, char **argv) {
    struct state s = {DEFAULT_LIMIT, 0, 0, 0, 0};
    if (argc > 1) {
        s.limit = number("LIMIT", argv[1]);
    }
    if (argc > 2) {
        s.shards = number("SHARDS", argv[2]);
        const char *index = getenv("JOB_COMPLETION_INDEX");
        if (index == NULL) {
            fail("SHARDS needs the shard's number in $JOB_COMPLETION_INDEX: pass --env "
                 "JOB_COMPLETION_INDEX to the runner");
        }
        s.index = number("JOB_COMPLETION_INDEX", index);
        if (s.index >= s.shards) {
            fprintf(stderr, "shard %" PRIu64 " does not exist: there are %" PRIu64
                    " shards, from 0\n", s.index, s.shards);
            exit(1);
        }
    }
    /* [start, end): u128 so that LIMIT * I does not overflow. */
    uint64_t start = 0, end = s.limit;
    if (s.shards > 0) {
        start = (uint64_t)((unsigned __int128)s.limit * s.index / s.shards);
        end = (uint64_t)((unsigned __int128)s.limit * (s.index + 1) / s.shards);
    }
    s.next = start;

    void *loaded;
    size_t len;
    int code = runner_checkpoint_load(&loaded, &len);
    if (code != RUNNER_OK && code != RUNNER_E_NONE) {
        fprintf(stderr, "cannot load the count: %s\n", runner_error());
        exit(1);
    }
    char *saved = loaded;
    if (saved != NULL) {
        struct state old;
        char text[128] = {0};
        memcpy(text, saved, len < sizeof text - 1 ? len : sizeof text - 1);
        free(saved);
        if (sscanf(text, "primes 1 %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64,
                   &old.limit, &old.index, &old.shards, &old.next, &old.count) != 5) {
            fail("the checkpoint is not a count of primes: use another --job-id");
        }
        if (old.limit != s.limit || old.index != s.index || old.shards != s.shards) {
            fprintf(stderr, "the checkpoint counts primes below %" PRIu64 "%s, ", old.limit,
                    describe(old.index, old.shards));
            fprintf(stderr, "not below %" PRIu64 "%s: use another --job-id\n", s.limit,
                    describe(s.index, s.shards));
            exit(1);
        }
        s = old;
    }

    runner_timer timer = {0};
    for (uint64_t n = s.next; n < end; n++) {
        if (is_prime(n)) {
            s.count++;
        }
        if (n % 1024 == 0) {
            if (runner_should_stop()) {
                s.next = n + 1;
                save(&s);
                runner_suspend();
            }
            if (runner_every(&timer, 1000000000)) {
                s.next = n + 1;
                save(&s);
                runner_progress(n - start, end - start);
            }
        }
    }
    printf("primes below %" PRIu64 "%s: %" PRIu64 "\n", s.limit, describe(s.index, s.shards),
           s.count);
    return 0;
}
