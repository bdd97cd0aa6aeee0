/* A core module that imports runner_job_v1 but exports no memory (built with
 * -Wl,--import-memory: its memory is imported instead). */
__attribute__((import_module("runner_job_v1"), import_name("shutdown_requested"))) int
shutdown_requested(void);

int main(void) { return shutdown_requested(); }
