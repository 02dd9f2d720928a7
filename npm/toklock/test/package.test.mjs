// The package metadata npm users depend on: one version everywhere, one bin, the 8 platform
// packages, and a tarball without tests or binaries.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { createRequire } from 'node:module'
import { binJs, pkgDir, root, run } from './helpers.mjs'

const require = createRequire(import.meta.url)
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'))

/** Platform directory name napi uses for each Rust target. */
const PLATFORM_OF_TARGET = {
  'x86_64-apple-darwin': ['darwin-x64', 'darwin', 'x64', undefined],
  'aarch64-apple-darwin': ['darwin-arm64', 'darwin', 'arm64', undefined],
  'x86_64-pc-windows-msvc': ['win32-x64-msvc', 'win32', 'x64', undefined],
  'aarch64-pc-windows-msvc': ['win32-arm64-msvc', 'win32', 'arm64', undefined],
  'x86_64-unknown-linux-gnu': ['linux-x64-gnu', 'linux', 'x64', 'glibc'],
  'aarch64-unknown-linux-gnu': ['linux-arm64-gnu', 'linux', 'arm64', 'glibc'],
  'x86_64-unknown-linux-musl': ['linux-x64-musl', 'linux', 'x64', 'musl'],
  'aarch64-unknown-linux-musl': ['linux-arm64-musl', 'linux', 'arm64', 'musl'],
}

test('npm package, crate, addon and CLI report the same version', async () => {
  const metadata = await run('cargo', ['metadata', '--no-deps', '--format-version', '1', '--offline'], {
    cwd: root,
    timeoutMs: 60_000,
  })
  assert.equal(metadata.code, 0, metadata.stderr)
  const crate = JSON.parse(metadata.stdout).packages.find((p) => p.name === 'toklock')
  assert.ok(crate, 'crates/toklock is in the workspace')
  assert.equal(pkg.version, crate.version)
  assert.equal(require('../index.js').version, crate.version)
  const cli = await run(process.execPath, [binJs, '--version'])
  assert.equal(cli.stdout.trim(), `toklock ${crate.version}`)
})

test('exactly one bin, named like the package (npx needs that)', () => {
  assert.equal(pkg.name, 'toklock')
  assert.deepEqual(pkg.bin, { toklock: 'bin/toklock.js' })
  assert.match(readFileSync(join(pkgDir, pkg.bin.toklock), 'utf8'), /^#!\/usr\/bin\/env node\n/)
  assert.deepEqual(pkg.engines, { node: '>=18' })
  assert.equal(pkg.license, 'Apache-2.0')
  assert.equal(pkg.scripts?.postinstall, undefined)
  assert.equal(pkg.scripts?.install, undefined)
})

test('the 8 platform packages exist, match the targets and are optional deps at the same version', () => {
  assert.equal(pkg.napi.binaryName, 'toklock')
  assert.equal(pkg.napi.packageName, '@toklock/binding')
  assert.deepEqual(pkg.napi.targets.toSorted(), Object.keys(PLATFORM_OF_TARGET).toSorted())
  const dirs = readdirSync(join(pkgDir, 'npm')).toSorted()
  assert.deepEqual(dirs, Object.values(PLATFORM_OF_TARGET).map(([dir]) => dir).toSorted())
  const expectedDeps = {}
  for (const [triple, [dir, os, cpu, libc]] of Object.entries(PLATFORM_OF_TARGET)) {
    const sub = JSON.parse(readFileSync(join(pkgDir, 'npm', dir, 'package.json'), 'utf8'))
    assert.equal(sub.name, `@toklock/binding-${dir}`, triple)
    assert.equal(sub.version, pkg.version, sub.name)
    assert.deepEqual(sub.os, [os], sub.name)
    assert.deepEqual(sub.cpu, [cpu], sub.name)
    assert.deepEqual(sub.libc, libc && [libc], sub.name)
    assert.equal(sub.main, `toklock.${dir}.node`, sub.name)
    assert.deepEqual(sub.files, [`toklock.${dir}.node`], sub.name)
    assert.equal(sub.license, pkg.license, sub.name)
    expectedDeps[sub.name] = pkg.version
  }
  assert.deepEqual(pkg.optionalDependencies, expectedDeps)
})

test('the tarball has the API, loader, types and bin, and no tests or binaries', async () => {
  const result = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: pkgDir })
  assert.equal(result.code, 0, result.stderr)
  const files = JSON.parse(result.stdout)[0].files.map((f) => f.path).toSorted()
  assert.deepEqual(files, [
    'LICENSE',
    'README.md',
    'bin/toklock.js',
    'binding.d.ts',
    'binding.js',
    'index.d.mts',
    'index.d.ts',
    'index.js',
    'index.mjs',
    'lib/native.js',
    'package.json',
  ])
  assert.equal(readFileSync(join(pkgDir, 'LICENSE'), 'utf8'), readFileSync(join(root, 'LICENSE'), 'utf8'))
})

test('no Cargo profile aborts on panic (a panic in the addon would kill the host Node)', () => {
  const cargoToml = readFileSync(join(root, 'Cargo.toml'), 'utf8')
  assert.doesNotMatch(cargoToml, /^\s*panic\s*=\s*"abort"/m)
})

test('index.d.ts declares every option the addon takes, plus signal', () => {
  const props = (file) => {
    const text = readFileSync(join(pkgDir, file), 'utf8')
    const body = /interface StartOptions \{([\s\S]*?)\n\}/.exec(text)[1]
    return [...body.matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1]).toSorted()
  }
  assert.deepEqual(props('index.d.ts'), [...props('binding.d.ts'), 'signal'].toSorted())
})
