'use strict'
// The public Node API of toklock: a thin, validating layer over the Rust addon.

const { binding } = require('./lib/native.js')

/** Options accepted by start(), with the type each must have. */
const OPTION_TYPES = {
  port: 'number',
  host: 'string',
  upstream: 'string',
  maxBody: 'number',
  shutdownGrace: 'number',
  upstreamTimeout: 'number',
  fairBy: 'string',
  schedule: 'string',
  maxInflight: 'number',
  slowBelow: 'number',
  pauseBelow: 'number',
  maxQueuedBytes: 'number',
  maxWait: 'number',
  overloadRetries: 'number',
  log: 'string',
  signal: 'object',
}

/** An unref-able timer that holds the event loop open while a server runs, like net.Server:
 *  the Rust server runs on its own threads, which Node does not count as pending work. */
const KEEP_ALIVE_MS = 2 ** 31 - 1

function normalize(options) {
  if (options === undefined || options === null) return {}
  if (typeof options === 'number') return { port: options }
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(
      `toklock.start: expected a port number or an options object, got ${describe(options)}`,
    )
  }
  const out = {}
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue
    const type = OPTION_TYPES[key]
    if (!type) {
      throw new TypeError(
        `toklock.start: unknown option "${key}" (known: ${Object.keys(OPTION_TYPES).join(', ')})`,
      )
    }
    if (key === 'upstream' && value instanceof URL) {
      out.upstream = value.href
      continue
    }
    if (key === 'signal') {
      if (!value || typeof value.addEventListener !== 'function' || !('aborted' in value)) {
        throw new TypeError(`toklock.start: option "signal" must be an AbortSignal`)
      }
    } else if (typeof value !== type) {
      throw new TypeError(
        `toklock.start: option "${key}" must be a ${type}, got ${describe(value)}`,
      )
    }
    out[key] = value
  }
  return out
}

function describe(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`
  return `${typeof value} ${String(value)}`
}

/** Makes the addon's errors look like Node's: a clear message with a `code`. */
function fromNative(err) {
  if (!(err instanceof Error)) return new Error(`toklock: ${String(err)}`)
  const invalid = err.code === 'InvalidArg'
  const error = invalid
    ? new RangeError(`toklock.start: ${err.message}`)
    : new Error(`toklock: ${err.message}`)
  error.code = invalid ? 'ERR_INVALID_ARG_VALUE' : err.code
  error.cause = err
  return error
}

function abortError(signal) {
  if (signal.reason instanceof Error) return signal.reason
  const error = new Error('toklock.start: aborted')
  error.name = 'AbortError'
  error.code = 'ABORT_ERR'
  return error
}

/** A running toklock proxy, as returned by start(). */
class Server {
  #native
  #keepAlive
  #closing = null
  #detach = null

  constructor(native) {
    this.#native = native
    this.#keepAlive = setInterval(() => {}, KEEP_ALIVE_MS)
    /** The port it listens on (the one picked, after port 0). */
    this.port = native.port
    /** The address it listens on, e.g. "127.0.0.1". */
    this.host = native.host
    /** http://HOST:PORT, the value to give agents as ANTHROPIC_BASE_URL. */
    this.url = native.url
  }

  /** Stops accepting, lets open requests and streams finish (up to shutdownGrace) and
   *  resolves once stopped. Calling it again returns the same promise. */
  close() {
    if (!this.#closing) {
      this.#closing = this.#native.close().then(
        () => this.#release(),
        (err) => {
          this.#release()
          throw fromNative(err)
        },
      )
    }
    return this.#closing
  }

  /** Resolves once the server has stopped, whoever stopped it. Keeps the process alive until
   *  then, so `await server.closed()` is how a script serves "forever". */
  closed() {
    return this.#native.closed().then(() => this.#release(), (err) => {
      throw fromNative(err)
    })
  }

  /** Drops every connection now, without draining. */
  abort() {
    this.#native.abort()
    this.#release()
  }

  /** Lets the process exit while the server runs (like net.Server#unref). */
  unref() {
    this.#keepAlive?.unref()
    return this
  }

  /** Undoes unref(): the process stays alive until close(). */
  ref() {
    this.#keepAlive?.ref()
    return this
  }

  /** For `await using server = await start(0)`. */
  [Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')]() {
    return this.close()
  }

  /** @internal */
  _onAbort(signal) {
    const onAbort = () => {
      this.close().catch(() => {})
    }
    signal.addEventListener('abort', onAbort, { once: true })
    this.#detach = () => signal.removeEventListener('abort', onAbort)
  }

  #release() {
    if (this.#keepAlive) {
      clearInterval(this.#keepAlive)
      this.#keepAlive = null
    }
    if (this.#detach) {
      this.#detach()
      this.#detach = null
    }
  }
}

/**
 * Starts a toklock proxy in this process and resolves once it is listening.
 * @param {number | object} [options] a port, or { port, host, upstream, maxBody, shutdownGrace,
 *   upstreamTimeout, fairBy, schedule, maxInflight, slowBelow, pauseBelow, maxQueuedBytes, maxWait,
 *   overloadRetries, log, signal } (see index.d.ts)
 */
async function start(options) {
  const { signal, ...rest } = normalize(options)
  if (signal && signal.aborted) throw abortError(signal)
  let native
  try {
    native = await binding.start(rest)
  } catch (err) {
    throw fromNative(err)
  }
  const server = new Server(native)
  if (signal) {
    if (signal.aborted) {
      await server.close()
      throw abortError(signal)
    }
    server._onAbort(signal)
  }
  return server
}

/** The toklock version compiled into the native addon. */
const version = binding.version()

module.exports = { start, version, Server }
