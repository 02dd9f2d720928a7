'use strict'
// Loads the prebuilt addon through the napi-rs generated loader (../binding.js) and turns its
// long list of load errors into one message a user can act on.

const pkg = require('../package.json')

const PREFIX = '@toklock/binding-'

/** The loader's name for this machine, e.g. "linux-x64-gnu" or "darwin-arm64". */
function platformKey() {
  const { platform, arch } = process
  if (platform === 'win32') return `${platform}-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  let glibc = true
  try {
    // excludeNetwork: without it, getReport() can hang for minutes on a broken resolver.
    process.report.excludeNetwork = true
    glibc = Boolean(process.report.getReport().header.glibcVersionRuntime)
  } catch {
    // Unknown: assume glibc, as the loader does.
  }
  return `${platform}-${arch}-${glibc ? 'gnu' : 'musl'}`
}

function supportedKeys() {
  return Object.keys(pkg.optionalDependencies || {})
    .filter((name) => name.startsWith(PREFIX))
    .map((name) => name.slice(PREFIX.length))
}

/** The first load error that is not just "package not installed" (e.g. a dlopen failure from
 *  a too old glibc), which is worth showing; the loader chains them through `cause`. */
function interestingCause(err) {
  for (let cause = err && err.cause; cause; cause = cause.cause) {
    const message = String(cause.message || '')
    if (message && !message.startsWith('Cannot find module')) return message.split('\n')[0]
  }
  return ''
}

/** Builds the single error shown when the addon cannot be loaded. */
function loadError(err) {
  const key = platformKey()
  const supported = supportedKeys()
  let message
  if (supported.includes(key)) {
    const name = `${PREFIX}${key}@${pkg.version}`
    message =
      `toklock: the prebuilt binary for this platform (${key}) could not be loaded. ` +
      `It comes from the optional dependency ${name}: reinstall toklock without ` +
      `--omit=optional / --no-optional (with npm, deleting node_modules and package-lock.json ` +
      `first avoids npm's optional-dependency bug, npm/cli#4828).`
    const detail = interestingCause(err)
    if (detail) message += ` Loader error: ${detail}`
  } else {
    message =
      `toklock: there is no prebuilt binary for this platform (${key}). ` +
      `Supported platforms: ${supported.join(', ')}.`
  }
  const error = new Error(message)
  error.code = 'TOKLOCK_NO_BINARY'
  error.cause = err
  return error
}

let binding
try {
  binding = require('../binding.js')
} catch (err) {
  throw loadError(err)
}

module.exports = { binding, platformKey, supportedKeys }
