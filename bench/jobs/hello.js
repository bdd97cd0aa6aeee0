// The JavaScript job whose start the benchmark measures: it prints one line.

import { job } from "runner-job";

export const run = job(() => {
  console.log("hello from a JavaScript job");
});
