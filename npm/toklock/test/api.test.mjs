// The Node API as a user calls it: start(), the official SDK through it, close(), errors.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import Anthropic from '@anthropic-ai/sdk'
import { start, version } from '../index.mjs'
import { MODEL, freePort, isListening, killAll, pkgDir, root, run, startMock } from './helpers.mjs'

const require = createRequire(import.meta.url)

let mock
before(async () => {
  mock = await startMock()
})
after(killAll)

const client = (baseURL, options = {}) =>
  new Anthropic({ baseURL, apiKey: 'sk-ant-test-npm', maxRetries: 0, ...options })

describe('start(0) with the official SDK', () => {
  let server
  before(async () => {
    // The scheduler options are accepted; the defaults would do as well here.
    server = await start({ port: 0, upstream: mock.url, fairBy: 'header:x-team', schedule: 'token-fair', maxInflight: 4, maxWait: 60 })
  })
  after(() => server?.close())

  test('reports where it listens', () => {
    assert.equal(server.host, '127.0.0.1')
    assert.ok(server.port > 0 && server.port < 65536)
    assert.equal(server.url, `http://127.0.0.1:${server.port}`)
  })

  test('messages.create', async () => {
    const message = await client(server.url).messages.create({
      model: MODEL,
      max_tokens: 64,
      messages: [{ role: 'user', content: 'Hello from the npm package.' }],
    })
    assert.equal(message.type, 'message')
    assert.equal(message.content[0].type, 'text')
    assert.ok(message.usage.output_tokens > 0)
  })

  test('messages.stream', async () => {
    const stream = client(server.url).messages.stream({
      model: MODEL,
      max_tokens: 64,
      messages: [{ role: 'user', content: 'Stream a few words.' }],
    })
    const chunks = []
    stream.on('text', (text) => chunks.push(text))
    const final = await stream.finalMessage()
    assert.ok(chunks.length > 1, `expected several deltas, got ${chunks.length}`)
    assert.equal(chunks.join(''), final.content[0].text)
  })
})

test('start(port) takes a bare number, and close() frees the port', async () => {
  const port = await freePort()
  const first = await start(port)
  assert.equal(first.port, port)
  assert.ok(await isListening(port))
  await first.close()
  assert.equal(await isListening(port), false)
  // Bind the same port again: nothing of the first server holds it.
  const second = await start({ port, upstream: mock.url })
  assert.equal(second.port, port)
  await second.close()
  await second.close() // idempotent
  await second.closed()
})

test('two servers in one process serve independently', async () => {
  const [a, b] = await Promise.all([start({ port: 0, upstream: mock.url }), start({ port: 0, upstream: mock.url })])
  try {
    assert.notEqual(a.port, b.port)
    const ask = (server) =>
      client(server.url).messages.create({
        model: MODEL,
        max_tokens: 16,
        messages: [{ role: 'user', content: 'hi' }],
      })
    const [ra, rb] = await Promise.all([ask(a), ask(b)])
    assert.equal(ra.type, 'message')
    assert.equal(rb.type, 'message')
    await a.close()
    assert.equal(await isListening(a.port), false)
    assert.equal((await ask(b)).type, 'message')
  } finally {
    await Promise.all([a.close(), b.close()])
  }
})

describe('bad options reject with a clear error', () => {
  const cases = [
    [{ port: 70000 }, RangeError, /toklock\.start: invalid port 70000/],
    [{ port: 1.5 }, RangeError, /invalid port 1\.5/],
    [{ port: '4000' }, TypeError, /option "port" must be a number, got the string "4000"/],
    [{ prot: 0 }, TypeError, /unknown option "prot"/],
    [{ upstream: 'ftp://example.com' }, RangeError, /invalid upstream "ftp:\/\/example\.com".*http:\/\/ or https:\/\//],
    [{ host: 'example.com' }, RangeError, /invalid host "example\.com"/],
    [{ shutdownGrace: -1 }, RangeError, /invalid shutdownGrace -1/],
    [{ maxBody: 0 }, RangeError, /invalid maxBody 0/],
    [{ fairBy: 'nobody' }, RangeError, /invalid fairBy "nobody"/],
    [{ schedule: 'fastest-first' }, RangeError, /invalid schedule "fastest-first"/],
    [{ maxInflight: 0 }, RangeError, /invalid maxInflight 0: expected a whole number from 1 to 1000/],
    [{ maxWait: -2 }, RangeError, /invalid maxWait -2/],
    [{ signal: {} }, TypeError, /"signal" must be an AbortSignal/],
    ['4000', TypeError, /expected a port number or an options object/],
  ]
  for (const [options, type, message] of cases) {
    test(JSON.stringify(options), async () => {
      await assert.rejects(start(options), (err) => {
        assert.ok(err instanceof type, `${err} is not a ${type.name}`)
        assert.match(err.message, message)
        return true
      })
    })
  }

  test('a port in use', async () => {
    const holder = await start(0)
    try {
      await assert.rejects(start({ port: holder.port }), (err) => {
        assert.match(err.message, new RegExp(`^toklock: cannot listen on 127\\.0\\.0\\.1:${holder.port}: .*in use`))
        return true
      })
    } finally {
      await holder.close()
    }
  })
})

test('an AbortSignal closes the server', async () => {
  const controller = new AbortController()
  const server = await start({ port: 0, upstream: mock.url, signal: controller.signal })
  assert.ok(await isListening(server.port))
  controller.abort()
  await server.closed()
  assert.equal(await isListening(server.port), false)
  await assert.rejects(start({ port: 0, signal: AbortSignal.abort() }), { name: 'AbortError' })
})

test('require() and import share one API', () => {
  const cjs = require('../index.js')
  assert.equal(cjs.start, start)
  assert.equal(cjs.version, version)
})

describe('process lifetime', () => {
  const script = (body) => [
    '--input-type=module',
    '-e',
    `import { start } from ${JSON.stringify(join(pkgDir, 'index.mjs'))}\n${body}`,
  ]

  test('exits on its own after close()', async () => {
    const started = Date.now()
    const result = await run(
      process.execPath,
      script(`const s = await start(0); await s.close(); console.log('closed', s.port)`),
      { timeoutMs: 15_000 },
    )
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /closed \d+/)
    assert.ok(Date.now() - started < 10_000)
  })

  test('an open server keeps the process alive, unref() lets it exit', async () => {
    // Without close() the child would never exit; the timeout proves it is still serving.
    const alive = await run(
      process.execPath,
      script(`const s = await start(0); console.log('up'); setTimeout(() => { console.log('still up'); s.close() }, 1500)`),
      { timeoutMs: 15_000 },
    )
    assert.equal(alive.code, 0, alive.stderr)
    assert.match(alive.stdout, /up\nstill up/)
    const unref = await run(process.execPath, script(`const s = await start(0); s.unref(); console.log('up')`), {
      timeoutMs: 15_000,
    })
    assert.equal(unref.code, 0, unref.stderr)
  })
})

test('a platform without a prebuilt binary gets one clear message', async () => {
  const result = await run(
    process.execPath,
    [
      '-e',
      `Object.defineProperty(process, 'platform', { value: 'freebsd' })
       try { require(${JSON.stringify(pkgDir)}) } catch (err) { console.log(err.message); process.exit(3) }`,
    ],
    { timeoutMs: 15_000 },
  )
  assert.equal(result.code, 3, result.stderr)
  const message = result.stdout.trim()
  assert.ok(message.startsWith(`toklock: there is no prebuilt binary for this platform (freebsd-${process.arch}).`), message)
  for (const key of ['darwin-arm64', 'win32-x64-msvc', 'linux-x64-gnu', 'linux-arm64-musl']) {
    assert.ok(message.includes(key), `${key} missing from: ${message}`)
  }
  assert.equal(message.split('\n').length, 1)
})

test("the README's Node API example runs as written (against the mock)", async () => {
  const readme = readFileSync(join(pkgDir, 'README.md'), 'utf8')
  const example = /```js\n(import \{ start \} from 'toklock'[\s\S]*?)```/.exec(readme)?.[1]
  assert.ok(example, 'README has the example')
  const code = example
    .replace(`from 'toklock'`, `from ${JSON.stringify(pathToFileURL(join(pkgDir, 'index.mjs')).href)}`)
    .replace('await start(0)', `await start({ port: 0, upstream: ${JSON.stringify(mock.url)} })`)
  const result = await run(process.execPath, ['--input-type=module', '-e', code], {
    cwd: root,
    env: { ...process.env, ANTHROPIC_API_KEY: 'sk-ant-test-readme' },
    timeoutMs: 30_000,
  })
  assert.equal(result.code, 0, result.stderr)
  assert.match(result.stdout, /^toklock on http:\/\/127\.0\.0\.1:\d+\n.+/)
})

test('a supported platform whose binary package is missing names the package to reinstall', async () => {
  // What `npm install --omit=optional` (or npm/cli#4828) leaves: the main package alone.
  const dir = mkdtempSync(join(tmpdir(), 'toklock-nobinary-'))
  try {
    for (const file of ['package.json', 'index.js', 'binding.js', 'lib']) {
      cpSync(join(pkgDir, file), join(dir, file), { recursive: true })
    }
    const result = await run(
      process.execPath,
      ['-e', `try { require(${JSON.stringify(dir)}) } catch (err) { console.log(err.message); process.exit(3) }`],
      { cwd: dir, timeoutMs: 15_000 },
    )
    assert.equal(result.code, 3, result.stderr)
    const message = result.stdout.trim()
    assert.match(message, /^toklock: the prebuilt binary for this platform \((\S+)\) could not be loaded\./)
    assert.match(message, /optional dependency @toklock\/binding-\S+@\d+\.\d+\.\d+: reinstall toklock without --omit=optional/)
    assert.equal(message.split('\n').length, 1)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
