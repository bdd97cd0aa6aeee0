/* A core module that imports a function runner_job_v1 does not have. */
__attribute__((import_module("runner_job_v1"), import_name("teleport"))) void teleport(void);

int main(void) {
    teleport();
    return 0;
}
