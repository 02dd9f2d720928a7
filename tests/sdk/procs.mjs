// Runs the real binaries for the Node SDK tests: mock-anthropic upstream, toklock in front.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const target = join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'debug');

function binary(name) {
  const path = join(target, name);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build -p toklock -p mock-anthropic\` first`);
  }
  return path;
}

/** Spawns a binary and resolves with the first match of `pattern` on the chosen stream. */
function startAndWait(path, args, stream, pattern, timeoutMs = 20000) {
  const child = spawn(path, args, { stdio: ['ignore', stream === 'stdout' ? 'pipe' : 'ignore', stream === 'stderr' ? 'pipe' : 'ignore'] });
  const lines = [];
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${path}: no line matching ${pattern} in ${timeoutMs} ms: ${lines.join('\n')}`));
    }, timeoutMs);
    const rl = createInterface({ input: child[stream] });
    rl.on('line', (line) => {
      lines.push(line);
      const match = pattern.exec(line);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, url: match[1], lines });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${path} exited with ${code}: ${lines.join('\n')}`));
    });
  });
}

export function startMock(...flags) {
  return startAndWait(binary('mock-anthropic'), ['--port', '0', ...flags], 'stdout', /listening on (http:\/\/\S+)/);
}

export function startToklock(upstream, ...flags) {
  return startAndWait(
    binary('toklock'),
    ['--port', '0', '--upstream', upstream, '--log', 'warn', ...flags],
    'stderr',
    /export ANTHROPIC_BASE_URL=(\S+)/,
  );
}

/** Stops a child and waits for it; resolves with its exit code. */
export function stop({ child }, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolvePromise) => {
    child.once('exit', (code) => resolvePromise(code));
    child.kill(signal);
  });
}
