/** Options for {@link start}. Every field is optional; defaults match the `toklock` CLI flags. */
export interface StartOptions {
  /** Port to listen on; 0 picks a free one (read it back from `server.port`). Default 4000. */
  port?: number
  /** IP address to listen on; "localhost" means 127.0.0.1. Default "127.0.0.1". */
  host?: string
  /** Upstream API base URL, http:// or https://. Default "https://api.anthropic.com". */
  upstream?: string | URL
  /** Largest request body accepted, in bytes. Default 33554432 (32 MiB). */
  maxBody?: number
  /** Seconds that open requests and streams may take to finish after `close()`. Default 30. */
  shutdownGrace?: number
  /** Seconds to wait for the upstream's response headers before answering 504. Default 600. */
  upstreamTimeout?: number
  /**
   * What one agent (one fair queue) is, like `--fair-by`: "auto" (the x-toklock-agent header
   * or an /a/NAME path prefix, then Claude Code's session, then the client process, then the
   * connection), "connection", "process", "ip", "api-key" or "header:NAME". Default "auto".
   */
  fairBy?: string
  /**
   * How the next agent is chosen, like `--schedule`: "round-robin" takes turns per request;
   * "token-fair" weighs turns by the tokens each agent's requests really used. Default
   * "round-robin".
   */
  schedule?: 'round-robin' | 'token-fair'
  /** Requests in flight per budget while it has plenty left, 1 to 1000. Default 3. */
  maxInflight?: number
  /** Tokens left in a bucket below which its lane narrows to one request. Default 10000. */
  slowBelow?: number
  /** Tokens left in a bucket below which its lane pauses. Default 3000. */
  pauseBelow?: number
  /** Body bytes queued or in flight before new requests are refused. Default 512 MiB. */
  maxQueuedBytes?: number
  /** Longest a request may wait in its queue, in seconds, before the caller gets a 504.
   *  Default: as long as the client waits. */
  maxWait?: number
  /** Times one request is requeued after a 529/503 before the caller gets it. Default 5. */
  overloadRetries?: number
  /**
   * Filter for toklock's logs on stderr: "error", "warn", "info", "debug", "trace" or a
   * tracing filter. Default "warn". The first server (or CLI run) in a process sets it.
   */
  log?: string
  /** Aborting it closes the server (like `server.close()`). */
  signal?: AbortSignal
}

/** A running toklock proxy. Like `net.Server`, it keeps the process alive until closed. */
export declare class Server {
  private constructor()
  /** The port it listens on (the one picked, after `port: 0`). */
  readonly port: number
  /** The address it listens on, e.g. "127.0.0.1". */
  readonly host: string
  /** `http://HOST:PORT`: give this to agents as `ANTHROPIC_BASE_URL`. */
  readonly url: string
  /**
   * Stops accepting, lets open requests and streams finish (up to `shutdownGrace` seconds),
   * then resolves. Calling it again returns the same promise.
   */
  close(): Promise<void>
  /** Resolves once the server has stopped, whoever stopped it. */
  closed(): Promise<void>
  /** Drops every connection now, without draining. */
  abort(): void
  /** Lets the process exit while the server still runs. */
  unref(): this
  /** Keeps the process alive until `close()` (the default). */
  ref(): this
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * Starts a toklock proxy inside this process; resolves once it is listening.
 * Rejects with a TypeError or RangeError for bad options and with an Error whose message
 * starts "toklock: cannot listen on" when the address cannot be bound.
 *
 * @example
 * const server = await start(0)
 * process.env.ANTHROPIC_BASE_URL = server.url
 * // ... run agents ...
 * await server.close()
 */
export declare function start(options?: number | StartOptions): Promise<Server>

/** The toklock version compiled into the native addon, e.g. "0.1.0". */
export declare const version: string
