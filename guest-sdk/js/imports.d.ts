// The component's imports a job may use directly besides the SDK (`wasi:...`,
// `runner:job/...`), as the build resolves them: typed loosely, see the WIT files.
declare module "wasi:*";
declare module "runner:*";
