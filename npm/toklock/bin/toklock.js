#!/usr/bin/env node
'use strict'
// `npx toklock`: runs the Rust CLI inside this Node process through the addon. Signals are
// handled here, not in Rust: the first SIGINT/SIGTERM drains, a second one exits at once.

// Node may have made stdout/stderr non-blocking (pipes, TTYs); Rust's writes would then fail
// with EAGAIN on large output such as --help.
for (const stream of [process.stdout, process.stderr]) {
  stream._handle?.setBlocking?.(true)
}

let binding
try {
  binding = require('../lib/native.js').binding
} catch (err) {
  process.stderr.write(`${err.message}\n`)
  process.exit(1)
}

const cli = new binding.Cli()

// Ctrl-C under `npx` reaches this process twice: from the terminal (the whole process group)
// and again from npm, which forwards SIGINT/SIGTERM to its child. Signals this close together
// are one request; only a later one means "stop now".
const SAME_SIGNAL_MS = 500
let firstSignalAt = 0

function onSignal() {
  const now = Date.now()
  if (firstSignalAt === 0) {
    firstSignalAt = now
    cli.stop()
  } else if (now - firstSignalAt > SAME_SIGNAL_MS) {
    process.stderr.write('toklock: second signal, exiting now\n')
    process.exit(130)
  }
}

process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)

cli.run(['toklock', ...process.argv.slice(2)]).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`toklock: ${err && err.message ? err.message : err}\n`)
    process.exit(1)
  },
)
