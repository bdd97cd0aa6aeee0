// `wordcount.wasm DIR [TOP]`: counts the words of every file under DIR (a directory
// given to the job with `runner --dir HOST::DIR`) and prints the TOP (default 10) most
// frequent. Stopped and run again, it resumes at the file and byte offset it reached.
//
// The JavaScript twin of `examples/wordcount` and `examples/python-wordcount`: a word
// is a run of letters and numbers (Unicode general categories L and N), compared in
// lower case; symbolic links are not followed. The output is the same.

import { LETTER_OR_NUMBER, Lines, args, compareCodePoints, job, listFiles, lowerCase } from "runner-job";

const WORD = new RegExp(`[${LETTER_OR_NUMBER}]+`, "gu");

export const run = job((ctx) => {
  const [, dir, topArg] = args();
  if (dir === undefined) {
    throw new Error("usage: wordcount.wasm DIR [TOP]");
  }
  const top = topArg === undefined ? 10 : parseTop(topArg);
  if (!ctx.resumed) {
    ctx.state = { files: listInput(dir), counts: {} };
  }
  const { files, counts } = ctx.state;
  for (const line of ctx.batch(new Lines(files), { saveEvery: 1 })) {
    for (const [word] of line.matchAll(WORD)) {
      const lower = lowerCase(word);
      // Own properties only: `counts.constructor` is Object's.
      counts[lower] = (Object.hasOwn(counts, lower) ? counts[lower] : 0) + 1;
    }
  }

  const ranked = Object.entries(counts).sort((a, b) => b[1] - a[1] || compareCodePoints(a[0], b[0]));
  const words = ranked.reduce((sum, [, count]) => sum + count, 0);
  console.log(`${words} words, ${ranked.length} distinct, in ${files.length} files`);
  for (const [word, count] of ranked.slice(0, top)) {
    console.log(`${String(count).padStart(8)} ${word}`);
  }
});

/** A whole number as Rust's `usize` (32 bits here) parses it: digits, maybe a `+`. */
function parseTop(arg) {
  if (!/^\+?[0-9]+$/.test(arg) || Number(arg) >= 2 ** 32) {
    throw new Error(`TOP \`${arg}\` is not a whole number`);
  }
  return Number(arg);
}

/** Every regular file under `dir`, recursively, sorted. */
function listInput(dir) {
  try {
    return listFiles(dir);
  } catch (cause) {
    throw new Error(`cannot list ${dir} (did you pass --dir HOST::${dir}?)`, { cause });
  }
}
