// End to end as a user meets the package: publish the packed packages to a local Verdaccio,
// then `npx toklock`, `npm install -g toklock` and a project's `npm install toklock` from it,
// each with an empty cache and HOME. Needs a built addon (scripts/build-npm).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { createInterface } from 'node:readline'
import Anthropic from '@anthropic-ai/sdk'
import {
  MODEL,
  exited,
  freePort,
  hostPlatformKey,
  isListening,
  killAll,
  pkgDir,
  root,
  run,
  startAndWait,
  startMock,
  track,
} from './helpers.mjs'

const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'))
const hostKey = hostPlatformKey()
const otherKey = ['linux-arm64-musl', 'darwin-arm64'].find((key) => key !== hostKey)
const addon = `toklock.${hostKey}.node`
const platformDir = join(pkgDir, 'npm', hostKey)

let tmp
let registry
let mock
let npmEnv
const groups = new Set()

/** npm settings for a user with nothing configured: only our registry, an empty cache. */
function userEnv(name) {
  const home = join(tmp, `home-${name}`)
  mkdirSync(home, { recursive: true })
  return {
    ...npmEnv,
    HOME: home,
    npm_config_cache: join(tmp, `cache-${name}`),
  }
}

before(async () => {
  const built = join(platformDir, addon)
  assert.ok(existsSync(built), `${built} is missing: run scripts/build-npm --debug first`)
  tmp = mkdtempSync(join(tmpdir(), 'toklock-e2e-'))
  const port = await freePort()
  registry = `http://127.0.0.1:${port}/`

  // Verdaccio: no uplinks (nothing leaves 127.0.0.1), anonymous publish, room for the addon.
  const config = join(tmp, 'verdaccio.yaml')
  writeFileSync(
    config,
    [
      `storage: ${JSON.stringify(join(tmp, 'storage'))}`,
      'auth:',
      '  htpasswd:',
      `    file: ${JSON.stringify(join(tmp, 'htpasswd'))}`,
      '    max_users: -1',
      'uplinks: {}',
      'packages:',
      "  '**':",
      '    access: $all',
      '    publish: $all',
      '    unpublish: $all',
      'max_body_size: 500mb',
      `listen: 127.0.0.1:${port}`,
      'log: { type: stdout, format: pretty, level: warn }',
      'web:',
      '  enable: false',
      '',
    ].join('\n'),
  )
  await startAndWait(join(root, 'node_modules', '.bin', 'verdaccio'), ['--config', config], {
    pattern: /http address/,
    timeoutMs: 60_000,
  })

  // npm insists on a token to publish; Verdaccio lets any token publish under `$all`.
  const npmrc = join(tmp, 'npmrc')
  writeFileSync(npmrc, `registry=${registry}\n//127.0.0.1:${port}/:_authToken=e2e-fake-token\n`)
  npmEnv = {
    ...process.env,
    npm_config_userconfig: npmrc,
    npm_config_registry: registry,
    npm_config_update_notifier: 'false',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_loglevel: 'warn',
  }
  for (const key of Object.keys(npmEnv)) {
    // A developer's own npm settings (prefix, global config) must not leak in.
    if (/^npm_config_(prefix|globalconfig|global)$/i.test(key)) delete npmEnv[key]
  }

  // Pack and publish the host platform package, then the main package.
  const packs = join(tmp, 'packs')
  mkdirSync(packs)
  const publisher = userEnv('publisher')
  for (const dir of [platformDir, pkgDir]) {
    const packed = await run('npm', ['pack', dir, '--pack-destination', packs, '--json'], {
      env: publisher,
      cwd: tmp,
    })
    assert.equal(packed.code, 0, packed.stderr)
    const tarball = join(packs, JSON.parse(packed.stdout)[0].filename)
    const published = await run('npm', ['publish', tarball, '--registry', registry], {
      env: publisher,
      cwd: tmp,
    })
    assert.equal(published.code, 0, `${published.stdout}\n${published.stderr}`)
  }

  mock = await startMock()
})

after(async () => {
  for (const pgid of groups) {
    try {
      process.kill(-pgid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
  killAll()
  if (tmp) rmSync(tmp, { recursive: true, force: true })
})

test('the main package was published without the other 7 platform packages', async () => {
  const res = await fetch(`${registry}toklock`)
  assert.equal(res.status, 200)
  const meta = await res.json()
  assert.equal(meta['dist-tags'].latest, pkg.version)
  assert.deepEqual(meta.versions[pkg.version].optionalDependencies, pkg.optionalDependencies)
  assert.equal((await fetch(`${registry}@toklock%2fbinding-${otherKey}`)).status, 404)
})

/**
 * Runs `npx toklock` in an empty folder, makes an SDK call through it, then sends SIGINT to
 * its whole process group, as Ctrl-C in a terminal does. Resolves npx's exit code (or signal)
 * and its output.
 */
async function npxServeAndInterrupt(name, extraEnv = {}) {
  const cwd = join(tmp, `npx-${name}`)
  mkdirSync(cwd)
  const port = await freePort()
  const child = spawn(
    'npx',
    ['--yes', '--registry', registry, 'toklock', '--port', String(port), '--upstream', mock.url],
    { cwd, env: { ...userEnv('npx'), ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  )
  track(child)
  groups.add(child.pid)
  const ready = await waitFor(child, /export ANTHROPIC_BASE_URL=(\S+)/, 120_000)
  assert.equal(ready.match[1], `http://127.0.0.1:${port}`)
  const client = new Anthropic({ baseURL: ready.match[1], apiKey: 'sk-ant-test-npx', maxRetries: 0 })
  const message = await client.messages.create({
    model: MODEL,
    max_tokens: 16,
    messages: [{ role: 'user', content: `hi through npx (${name})` }],
  })
  assert.equal(message.type, 'message')
  process.kill(-child.pid, 'SIGINT')
  const code = await exited(child, 30_000)
  groups.delete(child.pid)
  const output = ready.lines.join('\n')
  assert.match(output, /draining/, output)
  assert.doesNotMatch(output, /second signal/, output)
  assert.equal(await isListening(port), false)
  return { code, output }
}

test('npx toklock serves the SDK and Ctrl-C drains it and exits 0', async () => {
  // With bash as npm's script shell (as on macOS), toklock is npm's direct child: it gets the
  // terminal's SIGINT and npm's forwarded copy, which must count as one Ctrl-C.
  const { code, output } = await npxServeAndInterrupt('bash', { npm_config_script_shell: 'bash' })
  assert.equal(code, 0, output)
})

test('npx toklock under the default sh also drains on Ctrl-C', async () => {
  // dash, Debian's sh, sits between npm and toklock and re-raises SIGINT once toklock has
  // drained and exited, so npm reports SIGINT, as for any Ctrl-C'd command; the drain is the
  // same.
  const { code, output } = await npxServeAndInterrupt('sh')
  assert.ok(code === 0 || code === 'SIGINT', `npx ended with ${code}\n${output}`)
})

test('npm install -g puts toklock on PATH', async () => {
  const prefix = join(tmp, 'global')
  const env = userEnv('global')
  const installed = await run('npm', ['install', '-g', '--prefix', prefix, 'toklock'], { env, cwd: tmp })
  assert.equal(installed.code, 0, `${installed.stdout}\n${installed.stderr}`)
  const binDir = process.platform === 'win32' ? prefix : join(prefix, 'bin')
  const version = await run('toklock', ['--version'], {
    env: { ...env, PATH: `${binDir}${delimiter}${process.env.PATH}` },
    cwd: tmp,
  })
  assert.equal(version.code, 0, version.stderr)
  assert.equal(version.stdout.trim(), `toklock ${pkg.version}`)
})

test('a project that installs toklock can require() and import it', async () => {
  const project = join(tmp, 'project')
  mkdirSync(project)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'e2e-project', version: '1.0.0', private: true }))
  const env = userEnv('project')
  const installed = await run('npm', ['install', 'toklock'], { env, cwd: project })
  assert.equal(installed.code, 0, `${installed.stdout}\n${installed.stderr}`)
  // Only the host's binary came down; the main package carries none of its own.
  assert.deepEqual(readdirSync(join(project, 'node_modules', '@toklock')), [`binding-${hostKey}`])
  assert.ok(!readdirSync(join(project, 'node_modules', 'toklock')).some((f) => f.endsWith('.node')))

  writeFileSync(
    join(project, 'use.cjs'),
    `const { start, version } = require('toklock')
start(0).then(async (server) => {
  const res = await fetch(server.url + '/toklock/health')
  console.log('cjs', version, res.status)
  await server.close()
})\n`,
  )
  writeFileSync(
    join(project, 'use.mjs'),
    `import { start } from 'toklock'
import toklock from 'toklock'
const server = await start({ port: 0 })
const res = await fetch(server.url + '/toklock/health')
console.log('esm', toklock.version, res.status)
await server.close()\n`,
  )
  for (const [file, tag] of [
    ['use.cjs', 'cjs'],
    ['use.mjs', 'esm'],
  ]) {
    const result = await run(process.execPath, [file], { cwd: project, env, timeoutMs: 30_000 })
    assert.equal(result.code, 0, result.stderr)
    assert.equal(result.stdout.trim(), `${tag} ${pkg.version} 200`)
  }
})

/** Like startAndWait, for an already spawned child: resolves on a stdout/stderr line match. */
function waitFor(child, pattern, timeoutMs) {
  const lines = []
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} in ${timeoutMs} ms:\n${lines.join('\n')}`)), timeoutMs)
    let done = false
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => {
        lines.push(line)
        const match = done ? null : pattern.exec(line)
        if (match) {
          done = true
          clearTimeout(timer)
          resolvePromise({ match, lines })
        }
      })
    }
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      if (!done) reject(new Error(`exited ${code ?? signal} before ${pattern}:\n${lines.join('\n')}`))
    })
  })
}
