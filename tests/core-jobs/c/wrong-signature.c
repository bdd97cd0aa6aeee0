/* A core module that imports one of runner_job_v1's functions with another signature
 * (checkpoint_save takes two i32 and returns an i32). */
#include <stdint.h>

__attribute__((import_module("runner_job_v1"), import_name("checkpoint_save"))) int64_t
checkpoint_save(int64_t state);

int main(void) { return (int)checkpoint_save(0); }
