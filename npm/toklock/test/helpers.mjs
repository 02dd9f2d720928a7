// Shared by the npm package tests: paths, the mock upstream, child processes, free ports.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import net from 'node:net'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

export const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const root = resolve(pkgDir, '..', '..')
export const binJs = join(pkgDir, 'bin', 'toklock.js')
export const MODEL = 'claude-sonnet-4-5'

const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')

/** Every child a test starts, so `killAll` in an `after` hook leaves nothing running. */
const children = new Set()

export function track(child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}

export function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  children.clear()
}

function mockBinary() {
  for (const profile of ['debug', 'release']) {
    const path = join(targetDir, profile, 'mock-anthropic')
    if (existsSync(path)) return path
  }
  throw new Error(`mock-anthropic is not built: run \`cargo build -p mock-anthropic\` (or scripts/test-node)`)
}

/**
 * Starts a child and resolves once a line of `stream` matches `pattern`.
 * Resolves { child, match, lines }; `lines` keeps collecting afterwards.
 */
export function startAndWait(cmd, args, { stream = 'stdout', pattern, env, cwd, timeoutMs = 60_000 }) {
  const child = track(spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] }))
  const lines = []
  const other = stream === 'stdout' ? child.stderr : child.stdout
  other.on('data', (chunk) => lines.push(...String(chunk).split('\n').filter(Boolean)))
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${cmd}: no line matching ${pattern} in ${timeoutMs} ms:\n${lines.join('\n')}`))
    }, timeoutMs)
    const rl = createInterface({ input: child[stream] })
    let done = false
    rl.on('line', (line) => {
      lines.push(line)
      const match = done ? null : pattern.exec(line)
      if (match) {
        done = true
        clearTimeout(timer)
        resolvePromise({ child, match, lines })
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      if (!done) reject(new Error(`${cmd} exited (${code ?? signal}) before ${pattern}:\n${lines.join('\n')}`))
    })
  })
}

/** The mock Anthropic API on a free port; resolves { child, url }. */
export async function startMock(...flags) {
  const started = await startAndWait(mockBinary(), ['--port', '0', ...flags], {
    pattern: /listening on (http:\/\/\S+)/,
  })
  return { ...started, url: started.match[1] }
}

/** Resolves the exit code (or signal name) of a child, killing it after `timeoutMs`. */
export function exited(child, timeoutMs = 30_000) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve(child.exitCode ?? child.signalCode)
  }
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`child ${child.pid} still running after ${timeoutMs} ms`))
    }, timeoutMs)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolvePromise(code ?? signal)
    })
  })
}

/** Runs a command to completion; resolves { code, stdout, stderr }. */
export function run(cmd, args, { env, cwd, timeoutMs = 120_000, input } = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = track(spawn(cmd, args, { env, cwd, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] }))
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    if (input !== undefined) child.stdin.end(input)
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms\n${stdout}\n${stderr}`))
    }, timeoutMs)
    child.once('error', reject)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolvePromise({ code: code ?? signal, stdout, stderr })
    })
  })
}

/** A port that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolvePromise(port))
    })
  })
}

/** Whether something accepts connections on 127.0.0.1:port. */
export function isListening(port) {
  return new Promise((resolvePromise) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolvePromise(true)
    })
    socket.once('error', () => resolvePromise(false))
  })
}

/** The napi platform name of this machine, e.g. "linux-x64-gnu" (as the loader computes it). */
export function hostPlatformKey() {
  const { platform, arch } = process
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  process.report.excludeNetwork = true
  const glibc = Boolean(process.report.getReport().header.glibcVersionRuntime)
  return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`
}
