/*
 * runner_job.h: jobs in C (or C++) for `runner`, as wasm32-wasip1 core modules.
 *
 * Header only. It declares the runner's `runner_job_v1` imports (the ABI, documented
 * in wit/runner_job_v1.md) and wraps them:
 *
 *   runner_should_stop()          a stop was asked: save and exit(RUNNER_SUSPENDED)
 *   runner_checkpoint_load(&p, &n) the last saved state, in a buffer from malloc
 *   runner_checkpoint_save(p, n)  durably commits n bytes as the state
 *   runner_suspend()              exit(RUNNER_SUSPENDED): the runner exits 75
 *   runner_every(&timer, ns)      true about once every ns nanoseconds
 *   runner_wait(ns)               sleeps, waking at once on a stop request
 *   runner_progress(done, total)  a progress report
 *   runner_error()                what the last failed call said
 *
 * Build a job with Debian's clang, lld and wasi-libc (apt-get install clang lld
 * wasi-libc libclang-rt-14-dev-wasm32):
 *
 *   clang --target=wasm32-wasi -O2 -I PATH/TO/guest-sdk/c -o job.wasm job.c
 *   runner job.wasm
 */
#ifndef RUNNER_JOB_H
#define RUNNER_JOB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The exit code of a job that stopped early after saving its state. */
#define RUNNER_SUSPENDED 75

/* What the checkpoint functions return. */
#define RUNNER_OK 0
#define RUNNER_E_TOO_LARGE 1 /* larger than a checkpoint holds (256 MiB) */
#define RUNNER_E_FENCED 2    /* another runner took the job over: exit at once */
#define RUNNER_E_IO 3        /* the store could not write it, or make it durable */
#define RUNNER_E_NONE 4      /* no checkpoint to load */
#define RUNNER_E_INVALID 5   /* a region outside memory, or the wrong length */

/* shutdown_reason() */
#define RUNNER_REASON_NONE 0
#define RUNNER_REASON_SIGTERM 1
#define RUNNER_REASON_SIGINT 2
#define RUNNER_REASON_SIGHUP 3
#define RUNNER_REASON_TIMEOUT 4
#define RUNNER_REASON_FENCED 5

/* A total that is not known, for runner_progress. */
#define RUNNER_TOTAL_UNKNOWN UINT64_MAX

#define RUNNER_IMPORT(name) \
    __attribute__((import_module("runner_job_v1"), import_name(#name)))

/* The ABI itself (wit/runner_job_v1.md). */
RUNNER_IMPORT(shutdown_requested) int32_t runner_job_v1_shutdown_requested(void);
RUNNER_IMPORT(shutdown_reason) int32_t runner_job_v1_shutdown_reason(void);
RUNNER_IMPORT(deadline) int64_t runner_job_v1_deadline(void);
RUNNER_IMPORT(wait_shutdown) int32_t runner_job_v1_wait_shutdown(int64_t timeout_ns);
RUNNER_IMPORT(checkpoint_size) int64_t runner_job_v1_checkpoint_size(void);
RUNNER_IMPORT(checkpoint_load) int32_t runner_job_v1_checkpoint_load(void *ptr, int32_t len);
RUNNER_IMPORT(checkpoint_save)
int32_t runner_job_v1_checkpoint_save(const void *ptr, int32_t len);
RUNNER_IMPORT(error_len) int32_t runner_job_v1_error_len(void);
RUNNER_IMPORT(error_copy) int32_t runner_job_v1_error_copy(char *ptr, int32_t len);
RUNNER_IMPORT(progress) void runner_job_v1_progress(int64_t done, int64_t total);

/* Whether the runner has been asked to stop the job: save, then runner_suspend().
 * Cheap (no I/O): call it between units of work. */
static inline bool runner_should_stop(void) {
    return runner_job_v1_shutdown_requested() != 0;
}

/* When the runner stops the job by force, in nanoseconds on CLOCK_MONOTONIC; -1
 * before a stop is requested. */
static inline int64_t runner_deadline(void) { return runner_job_v1_deadline(); }

/* Why the last failed call of this header failed when the header itself found the
 * failure (NULL: the runner did, and keeps the message). One per file that includes
 * the header. */
static const char *runner_failure_ = NULL;

/* Returns code, after noting that the header found the failure it stands for. */
static inline int runner_fail_(int code, const char *why) {
    runner_failure_ = why;
    return code;
}

/* The message of the last call that failed, in a static buffer ("" if none); cut at
 * 1023 bytes. */
static inline const char *runner_error(void) {
    static char message[1024];
    if (runner_failure_ != NULL) {
        return runner_failure_;
    }
    int32_t len = runner_job_v1_error_copy(message, (int32_t)sizeof message - 1);
    message[len > 0 ? len : 0] = '\0';
    return message;
}

/* The state the job last saved (in this run or an earlier one): on RUNNER_OK, *state
 * is a buffer from malloc that the caller frees, and *len its size. RUNNER_E_NONE if
 * the job never saved (*state NULL, *len 0): start from the beginning. Any other code
 * is an error (runner_error() says which): the job must not start from the beginning
 * then, or its first save would replace the state it could not load. */
static inline int runner_checkpoint_load(void **state, size_t *len) {
    *state = NULL;
    *len = 0;
    runner_failure_ = NULL;
    int64_t size = runner_job_v1_checkpoint_size();
    if (size < 0) {
        return RUNNER_E_NONE;
    }
    void *buffer = malloc(size > 0 ? (size_t)size : 1);
    if (buffer == NULL) {
        return runner_fail_(RUNNER_E_IO, "out of memory for the checkpoint");
    }
    int code = runner_job_v1_checkpoint_load(buffer, (int32_t)size);
    if (code != RUNNER_OK) {
        free(buffer);
        return code;
    }
    *state = buffer;
    *len = (size_t)size;
    return RUNNER_OK;
}

/* Durably commits the len bytes at state as the job's state, after flushing every
 * stdio stream (so that what the job wrote to files before the save is in them).
 * Returns RUNNER_OK, or a code runner_error() explains; on any error the state
 * saved before stands. */
static inline int runner_checkpoint_save(const void *state, size_t len) {
    runner_failure_ = NULL;
    if (fflush(NULL) != 0) {
        return runner_fail_(RUNNER_E_IO, "cannot flush the job's files before the save");
    }
    if (len > INT32_MAX) {
        return runner_fail_(RUNNER_E_TOO_LARGE, "the state is larger than 2 GiB");
    }
    return runner_job_v1_checkpoint_save(state, (int32_t)len);
}

/* Ends the run as suspended: flushes stdio and exits 75. Save first. */
__attribute__((noreturn)) static inline void runner_suspend(void) { exit(RUNNER_SUSPENDED); }

/* A report that done of total units are done (RUNNER_TOTAL_UNKNOWN: unknown). */
static inline void runner_progress(uint64_t done, uint64_t total) {
    runner_job_v1_progress((int64_t)done, (int64_t)total);
}

/* Sleeps for ns nanoseconds, or until a stop is requested: true if it was. A negative
 * ns waits for the request only. */
static inline bool runner_wait(int64_t ns) { return runner_job_v1_wait_shutdown(ns) != 0; }

/* The time on CLOCK_MONOTONIC, in nanoseconds. */
static inline int64_t runner_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* For runner_every: when it was last due (0: never). */
typedef struct {
    int64_t last;
} runner_timer;

/* True about once every interval_ns nanoseconds (not the first time it is asked):
 * `if (runner_every(&timer, 1000000000)) save();` saves about once a second. */
static inline bool runner_every(runner_timer *timer, int64_t interval_ns) {
    int64_t now = runner_now();
    if (timer->last == 0) {
        timer->last = now;
        return false;
    }
    if (now - timer->last < interval_ns) {
        return false;
    }
    timer->last = now;
    return true;
}

#ifdef __cplusplus
}
#endif

#endif /* RUNNER_JOB_H */
