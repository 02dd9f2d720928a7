// The `toklock` bin shim (what `npx toklock` runs): flags, serving, signals, exit codes.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import Anthropic from '@anthropic-ai/sdk'
import { MODEL, binJs, exited, killAll, run, startAndWait, startMock } from './helpers.mjs'

let mock
before(async () => {
  // Slow generation, so a stream is still open when the shim is asked to stop.
  mock = await startMock('--tokens-per-sec', '20', '--output-tokens', '5000')
})
after(killAll)

const env = { ...process.env, TOKLOCK_LOG: 'info' }

function startCli(...flags) {
  return startAndWait(process.execPath, [binJs, '--port', '0', '--upstream', mock.url, ...flags], {
    stream: 'stderr',
    pattern: /export ANTHROPIC_BASE_URL=(\S+)/,
    env,
  })
}

const client = (baseURL) => new Anthropic({ baseURL, apiKey: 'sk-ant-test-cli', maxRetries: 0 })

test('--version and --help print to stdout and exit 0', async () => {
  const v = await run(process.execPath, [binJs, '--version'])
  assert.equal(v.code, 0, v.stderr)
  assert.match(v.stdout, /^toklock \d+\.\d+\.\d+/)
  const help = await run(process.execPath, [binJs, '--help'])
  assert.equal(help.code, 0, help.stderr)
  assert.match(help.stdout, /--port/)
  assert.match(help.stdout, /--upstream/)
})

test('bad flags exit 2 with the clap message', async () => {
  const result = await run(process.execPath, [binJs, '--port', 'nope'])
  assert.equal(result.code, 2)
  assert.match(result.stderr, /invalid value 'nope' for '--port/)
  const upstream = await run(process.execPath, [binJs, '--upstream', 'ftp://x'])
  assert.equal(upstream.code, 2)
  assert.match(upstream.stderr, /http:\/\/ or https:\/\//)
})

test('a port in use exits 1', async () => {
  const first = await startCli()
  const port = new URL(first.match[1]).port
  const second = await run(process.execPath, [binJs, '--port', port], { timeoutMs: 30_000 })
  assert.equal(second.code, 1)
  assert.match(second.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}`))
  first.child.kill('SIGINT')
  assert.equal(await exited(first.child), 0)
})

test('serves the SDK, then SIGINT drains an open stream and exits 0', async () => {
  const cli = await startCli()
  const url = cli.match[1]
  const message = await client(url).messages.create({
    model: MODEL,
    max_tokens: 8,
    messages: [{ role: 'user', content: 'hi' }],
  })
  assert.equal(message.type, 'message')

  // ~1.5 s of streaming at 20 tokens/s; SIGINT arrives in the middle and must not cut it.
  const stream = client(url).messages.stream({
    model: MODEL,
    max_tokens: 30,
    messages: [{ role: 'user', content: 'a slow stream' }],
  })
  let firstText
  const gotText = new Promise((resolve) => {
    firstText = resolve
  })
  stream.on('text', () => firstText())
  await gotText
  cli.child.kill('SIGINT')
  const final = await stream.finalMessage()
  assert.equal(final.stop_reason, 'max_tokens')
  assert.equal(await exited(cli.child), 0)
  assert.ok(cli.lines.some((line) => /draining/.test(line)), cli.lines.join('\n'))
})

test('a second signal exits 130 at once', async () => {
  const cli = await startCli('--shutdown-grace', '60')
  const stream = client(cli.match[1]).messages.stream({
    model: MODEL,
    max_tokens: 2000, // 100 s at 20 tokens/s: only the second signal can end this quickly
    messages: [{ role: 'user', content: 'a very slow stream' }],
  })
  stream.on('error', () => {})
  const started = new Promise((resolve) => stream.on('text', resolve))
  await started
  cli.child.kill('SIGTERM')
  await new Promise((resolve) => setTimeout(resolve, 800))
  assert.equal(cli.child.exitCode, null, 'the first signal must drain, not exit')
  const t0 = Date.now()
  cli.child.kill('SIGINT')
  assert.equal(await exited(cli.child, 10_000), 130)
  assert.ok(Date.now() - t0 < 5000)
  assert.ok(cli.lines.some((line) => /second signal/.test(line)), cli.lines.join('\n'))
  stream.abort()
})

test('two signals at once (npx forwards a copy of Ctrl-C) count as one', async () => {
  const cli = await startCli()
  cli.child.kill('SIGINT')
  cli.child.kill('SIGINT')
  assert.equal(await exited(cli.child), 0)
  assert.ok(!cli.lines.some((line) => /second signal/.test(line)), cli.lines.join('\n'))
})
