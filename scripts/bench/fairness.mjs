// Fairness benchmark (issue 3): agents with the official Node SDK against mock-anthropic under a
// tight limit, once DIRECT (the SDK's default retries, what users have today) and once THROUGH
// TOKLOCK (baseURL = toklock, each agent naming itself with `x-toklock-agent`).
//
// Run it with scripts/bench-fairness, which builds the binaries. Loopback only, bounded in time.
//
// Measurement window. Every run starts from a fresh mock whose binding bucket (input tokens in
// every scenario) is drained to zero (its limit set to 1 per minute, one request spends it, the
// real limit put back; the mock refills at the old rate until the next access, so the real
// refill starts with the first agent request). The request and output buckets start full: they
// have headroom all run, as in a steady state. Agents start at t0 and stop issuing at T = t0 + duration. A request counts as served
// when its 2xx response headers arrive by T (the mock charges all three buckets at admission,
// one first-byte latency earlier); requests still waiting for headers at T are aborted and not counted, streams
// already flowing are read to the end. The most the buckets allowed over the window is then
// exactly rate x (T - t0) for the binding bucket, with nothing banked, in both modes alike.
import Anthropic from '@anthropic-ai/sdk';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync, createWriteStream } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// ---------------------------------------------------------------------------------------------
// Options
const opts = {
  duration: 40,
  scenarios: 'a,b,c',
  modes: 'direct,toklock',
  bin: join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'release'),
  out: join(root, '.tmp', 'bench', `fairness-${new Date().toISOString().replace(/[:.]/g, '-')}`),
  toklockArgs: [],
  timing: 'slow',
};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => {
    if (i + 1 >= process.argv.length) throw new Error(`${a} needs a value`);
    return process.argv[++i];
  };
  if (a === '--duration') opts.duration = Number(next());
  else if (a === '--scenarios') opts.scenarios = next();
  else if (a === '--modes') opts.modes = next();
  else if (a === '--bin') opts.bin = next();
  else if (a === '--out') opts.out = next();
  else if (a === '--toklock-arg') opts.toklockArgs.push(next());
  else if (a === '--timing') opts.timing = next();
  else if (a === '-h' || a === '--help') {
    console.log(`usage: fairness.mjs [--duration SECONDS] [--scenarios a,b,c] [--modes direct,toklock]
                   [--timing slow|fast] [--bin DIR] [--out DIR] [--toklock-arg ARG]...`);
    process.exit(0);
  } else throw new Error(`unknown option ${a}`);
}
if (!(opts.duration >= 5 && opts.duration <= 120)) throw new Error('--duration must be 5..120 s');

const MODEL = 'claude-sonnet-4-5';
const API_KEY = 'sk-ant-bench-fairness';
// How long one request takes upstream. `slow` is nearer the real API (first byte after 200 ms,
// 100 tokens/s, so a 20-token reply holds its slot ~0.4 s and the limit needs 2-4 requests in
// flight); `fast` (20 ms, 1000 tokens/s, ~40 ms a request) needs well under one.
const TIMINGS = {
  slow: ['--latency-ms', '200', '--tokens-per-sec', '100'],
  fast: ['--latency-ms', '20', '--tokens-per-sec', '1000'],
};
if (!TIMINGS[opts.timing]) throw new Error(`--timing must be one of ${Object.keys(TIMINGS).join(', ')}`);
const MOCK_TIMING = TIMINGS[opts.timing];

// Limits are per minute and refill continuously (limit/60 per second). They keep Tier 1's
// shape (input tokens bind; requests and output have headroom) but are scaled up so that a
// 40 s run serves hundreds of requests: with Tier 1's 50 RPM a run would serve ~30, too few to
// resolve 1% upstream 429s or a Jain index of 0.99. They are also below what the loops could
// take in one second (a: 5 requests/s for 10 loops, b: B alone could use twice the refill,
// c: 10/s for 18 loops): when one second of refill covers every loop, the SDK's 1 s
// retry-after puts all loops in lock-step and direct access looks perfect.
const SCENARIOS = {
  a: {
    title: 'greedy: A runs 8 loops, B and C one each',
    limits: { rpm: 600, itpm: 60000, otpm: 12000 },
    agents: [
      { name: 'A', loops: 8, input: 200, output: 20 },
      { name: 'B', loops: 1, input: 200, output: 20 },
      { name: 'C', loops: 1, input: 200, output: 20 },
    ],
  },
  b: {
    title: "big prompts: A's prompts cost 40x B's input tokens (2 loops each)",
    limits: { rpm: 1800, itpm: 120000, otpm: 48000 },
    agents: [
      { name: 'A', loops: 2, input: 4000, output: 20 },
      { name: 'B', loops: 2, input: 100, output: 20 },
    ],
  },
  c: {
    title: 'twelve agents, 1-2 loops each',
    limits: { rpm: 1200, itpm: 120000, otpm: 24000 },
    agents: Array.from({ length: 12 }, (_, i) => ({
      name: `ag${String(i + 1).padStart(2, '0')}`,
      loops: 1 + (i % 2),
      input: 200,
      output: 20,
    })),
  },
};

// ---------------------------------------------------------------------------------------------
// Child processes: tracked by pid and killed on every way out.
const children = new Set();
function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  children.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}
// Hard stop whatever happens: 3 scenarios x 2 modes x (duration + setup) plus slack.
const watchdog = setTimeout(() => {
  console.error('fairness: watchdog expired, stopping');
  killAll();
  process.exit(3);
}, (opts.duration + 60) * 6 * 1000 + 120000);
watchdog.unref();

function start(path, args, stream, pattern, logFile) {
  const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  const log = logFile ? createWriteStream(logFile) : null;
  const other = stream === 'stdout' ? child.stderr : child.stdout;
  other.on('data', (d) => log?.write(d));
  return new Promise((resolveStart, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path}: no banner in 20 s`)), 20000);
    const rl = createInterface({ input: child[stream] });
    let found = false;
    rl.on('line', (line) => {
      log?.write(`${line}\n`);
      const m = !found && pattern.exec(line);
      if (m) {
        found = true;
        clearTimeout(timer);
        resolveStart({ child, url: m[1] });
      }
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (!found) reject(new Error(`${path} exited (${code ?? sig}) before its banner`));
    });
  });
}

function stop(proc) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const t = setTimeout(() => proc.child.kill('SIGKILL'), 2000);
    proc.child.once('exit', () => {
      clearTimeout(t);
      res();
    });
    proc.child.kill('SIGTERM');
  });
}

async function mockCall(url, method, path, body) {
  const r = await fetch(`${url}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

// Empty the binding bucket (input tokens) of (API_KEY, sonnet): see the header comment. The
// request and output buckets stay full, as they are in the steady state of these scenarios.
async function drain(url, limits) {
  await mockCall(url, 'POST', '/_mock/reset-buckets');
  await mockCall(url, 'POST', '/_mock/config', { input_tokens_per_minute: 1 });
  const r = await fetch(`${url}/v1/messages`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'anthropic-version': '2023-06-01',
      'x-api-key': API_KEY,
      'x-mock-caller': 'drain',
      'x-mock-input-tokens': '1',
      'x-mock-output-tokens': '1',
    },
    body: JSON.stringify({ model: MODEL, max_tokens: 1, messages: [{ role: 'user', content: 'x' }] }),
  });
  await r.text();
  if (r.status !== 200) throw new Error(`drain request: ${r.status}`);
  await mockCall(url, 'POST', '/_mock/config', {
    requests_per_minute: limits.rpm,
    input_tokens_per_minute: limits.itpm,
    output_tokens_per_minute: limits.otpm,
  });
  await mockCall(url, 'POST', '/_mock/reset');
}

// ---------------------------------------------------------------------------------------------
// Agents
const now = () => performance.now();

// A prompt whose text is exactly 4 x tokens characters, so its size tells the truth to anyone
// estimating from bytes; x-mock-input-tokens makes the mock's charge exact as well.
function prompt(tokens) {
  const unit = 'lorem ipsum dolor sit amet, ';
  return unit.repeat(Math.ceil((tokens * 4) / unit.length)).slice(0, tokens * 4);
}

async function runLoop(agent, client, run, results) {
  const content = prompt(agent.input);
  const headers = {
    'x-mock-caller': agent.name,
    'x-mock-input-tokens': String(agent.input),
    'x-mock-output-tokens': String(agent.output),
  };
  while (!run.stopping) {
    const ac = new AbortController();
    const rec = { agent: agent.name, t0: now() - run.t0, tHeaders: null, tEnd: null };
    const inflight = { ac, hasHeaders: false };
    run.inflight.add(inflight);
    try {
      const { data: stream, response } = await client.messages
        .create(
          { model: MODEL, max_tokens: agent.output, stream: true, messages: [{ role: 'user', content }] },
          { signal: ac.signal, headers },
        )
        .withResponse();
      inflight.hasHeaders = true;
      rec.tHeaders = now() - run.t0;
      rec.status = response.status;
      const q = response.headers.get('x-toklock-queue-ms');
      rec.queueMs = q === null ? null : Number(q);
      let input = 0;
      let output = 0;
      for await (const ev of stream) {
        if (ev.type === 'message_start') input = ev.message.usage.input_tokens ?? 0;
        else if (ev.type === 'message_delta') output = ev.usage?.output_tokens ?? output;
      }
      rec.tEnd = now() - run.t0;
      rec.input = input;
      rec.output = output;
      rec.ok = true;
    } catch (e) {
      rec.tEnd = now() - run.t0;
      if (run.stopping && ac.signal.aborted) {
        rec.aborted = true;
      } else {
        rec.ok = false;
        rec.status = e?.status ?? null;
        rec.error = `${e?.constructor?.name ?? 'Error'}: ${String(e?.message ?? e).slice(0, 160)}`;
      }
    } finally {
      run.inflight.delete(inflight);
    }
    results.push(rec);
  }
}

function pct(values, p) {
  if (values.length === 0) return null;
  const s = [...values].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function jain(xs) {
  const sum = xs.reduce((a, b) => a + b, 0);
  const sq = xs.reduce((a, b) => a + b * b, 0);
  return sq === 0 ? null : (sum * sum) / (xs.length * sq);
}

async function runOne(key, mode) {
  const sc = SCENARIOS[key];
  const tag = `${key}-${mode}`;
  const limitArgs = ['--rpm', sc.limits.rpm, '--itpm', sc.limits.itpm, '--otpm', sc.limits.otpm].map(String);
  const mock = await start(
    join(opts.bin, 'mock-anthropic'),
    ['--port', '0', ...limitArgs, ...MOCK_TIMING, '--max-records', '1000'],
    'stdout',
    /listening on (http:\/\/\S+)/,
    join(opts.out, `${tag}.mock.log`),
  );
  let proxy = null;
  try {
    let baseURL = mock.url;
    if (mode === 'toklock') {
      proxy = await start(
        join(opts.bin, 'toklock'),
        ['--port', '0', '--upstream', mock.url, '--log', 'warn', ...opts.toklockArgs],
        'stderr',
        /export ANTHROPIC_BASE_URL=(\S+)/,
        join(opts.out, `${tag}.toklock.log`),
      );
      baseURL = proxy.url;
    }
    await drain(mock.url, sc.limits);

    const run = { t0: now(), stopping: false, inflight: new Set() };
    const results = [];
    const loops = [];
    for (const agent of sc.agents) {
      // One client per agent, like one agent process with its own SDK instance.
      const client = new Anthropic({
        baseURL,
        apiKey: API_KEY,
        defaultHeaders: { 'x-toklock-agent': agent.name },
      });
      for (let i = 0; i < agent.loops; i++) loops.push(runLoop(agent, client, run, results));
    }
    const windowMs = opts.duration * 1000;
    // Upstream tallies every 250 ms, to place the upstream 429s in time.
    const samples = [];
    const sampler = setInterval(() => {
      const t = now() - run.t0;
      mockCall(mock.url, 'GET', '/_mock/stats')
        .then((st) => samples.push({ t, requests: st.total.requests, rate_limited: st.total.rate_limited }))
        .catch(() => {});
    }, 250);
    await new Promise((r) => setTimeout(r, windowMs));
    clearInterval(sampler);
    // T: stop issuing, snapshot the upstream, abort what has no headers yet.
    run.stopping = true;
    const tStop = now() - run.t0;
    const statsAtT = await mockCall(mock.url, 'GET', '/_mock/stats');
    for (const f of run.inflight) if (!f.hasHeaders) f.ac.abort();
    // Streams already flowing finish within milliseconds; anything left after 15 s is a hang.
    const settled = await Promise.race([
      Promise.all(loops).then(() => true),
      new Promise((r) => setTimeout(() => r(false), 15000)),
    ]);
    if (!settled) for (const f of run.inflight) f.ac.abort();
    await Promise.race([Promise.all(loops), new Promise((r) => setTimeout(r, 5000))]);
    const statsEnd = await mockCall(mock.url, 'GET', '/_mock/stats');

    writeFileSync(join(opts.out, `${tag}.requests.jsonl`), results.map((r) => JSON.stringify(r)).join('\n') + '\n');
    writeFileSync(join(opts.out, `${tag}.stats.json`), JSON.stringify({ statsAtT, statsEnd, samples }, null, 2));
    const row = summarize(key, mode, sc, results, tStop, statsAtT, statsEnd, settled);
    // When the upstream 429s happened: the sample intervals in which the count went up.
    row.upstream429Times = [];
    let prev = { t: 0, rate_limited: 0 };
    for (const smp of samples.sort((x, y) => x.t - y.t)) {
      const d = smp.rate_limited - prev.rate_limited;
      if (d > 0) row.upstream429Times.push(`${d}@${(prev.t / 1000).toFixed(1)}-${(smp.t / 1000).toFixed(1)}s`);
      prev = smp;
    }
    return row;
  } finally {
    await stop(proxy);
    await stop(mock);
  }
}

function summarize(key, mode, sc, results, tStop, statsAtT, statsEnd, settled) {
  const W = tStop / 1000; // seconds, from t0 (buckets empty) to T
  const served = results.filter((r) => r.ok && r.tHeaders !== null && r.tHeaders <= tStop);
  const callerErrors = results.filter((r) => r.ok === false && r.tEnd <= tStop);
  const perAgent = sc.agents.map((a) => {
    const mine = served.filter((r) => r.agent === a.name);
    const errs = callerErrors.filter((r) => r.agent === a.name);
    const up = statsAtT.by_caller?.[a.name] ?? { requests: 0, rate_limited: 0 };
    return {
      name: a.name,
      loops: a.loops,
      requests: mine.length,
      input: mine.reduce((s, r) => s + r.input, 0),
      output: mine.reduce((s, r) => s + r.output, 0),
      tokens: mine.reduce((s, r) => s + r.input + r.output, 0),
      caller429: errs.filter((r) => r.status === 429).length,
      callerOther: errs.filter((r) => r.status !== 429).length,
      p50: pct(
        mine.map((r) => r.tEnd - r.t0),
        50,
      ),
      p99: pct(
        mine.map((r) => r.tEnd - r.t0),
        99,
      ),
      q99: pct(
        mine.filter((r) => r.queueMs !== null && r.queueMs !== undefined).map((r) => r.queueMs),
        99,
      ),
      upstreamRequests: up.requests,
      upstream429: up.rate_limited,
    };
  });
  const used = {
    requests: served.length,
    input: served.reduce((s, r) => s + r.input, 0),
    output: served.reduce((s, r) => s + r.output, 0),
  };
  const allowed = {
    requests: (sc.limits.rpm / 60) * W,
    input: (sc.limits.itpm / 60) * W,
    output: (sc.limits.otpm / 60) * W,
  };
  const util = Object.fromEntries(Object.keys(used).map((k) => [k, used[k] / allowed[k]]));
  // Input tokens bind in every scenario (and only that bucket is drained at t0, so only its
  // capacity over the window is exact); the other two are shown for headroom.
  const binding = 'input';
  // The same for the second half of the window only. A proxy that keeps a fixed reserve in the
  // bucket (a pause watermark) loses that reserve once per run, which weighs on a short window;
  // in the second half the reserve is already in place, so this shows the steady rate.
  const half = served.filter((r) => r.tHeaders > tStop / 2);
  const usedHalf = {
    requests: half.length,
    input: half.reduce((s, r) => s + r.input, 0),
    output: half.reduce((s, r) => s + r.output, 0),
  };
  const utilHalf = usedHalf[binding] / (allowed[binding] / 2);
  // Upstream busy time of the served requests (admission is one first-byte latency before the
  // headers), over the window: how many requests were in flight on average.
  const latencyMs = Number(MOCK_TIMING[MOCK_TIMING.indexOf('--latency-ms') + 1]);
  const meanInflight = served.reduce((s, r) => s + (r.tEnd - r.tHeaders + latencyMs), 0) / tStop;
  const total = statsAtT.total;
  const errorSamples = [...new Set(callerErrors.map((r) => r.error))].slice(0, 3);
  return {
    key,
    mode,
    title: sc.title,
    window: W,
    perAgent,
    served: served.length,
    jainRequests: jain(perAgent.map((a) => a.requests)),
    jainTokens: jain(perAgent.map((a) => a.tokens)),
    util,
    utilHalf,
    meanInflight,
    binding,
    upstreamRequests: total.requests,
    upstream429: total.rate_limited,
    upstream529: total.overloaded,
    upstreamServedAtT: total.requests - total.rate_limited - total.overloaded,
    upstream429AfterT: statsEnd.total.rate_limited - total.rate_limited,
    caller429: callerErrors.filter((r) => r.status === 429).length,
    callerOther: callerErrors.filter((r) => r.status !== 429).length,
    errorSamples,
    peakConcurrency: statsEnd.peak_concurrency,
    settled,
  };
}

// ---------------------------------------------------------------------------------------------
// Report
const f2 = (x) => (x === null || x === undefined ? '-' : x.toFixed(3));
const ms = (x) => (x === null || x === undefined ? '-' : `${Math.round(x)}`);
const pc = (x) => `${(100 * x).toFixed(1)}%`;
const maxOrDash = (xs) => {
  const v = xs.filter((x) => x !== null && x !== undefined);
  return v.length ? ms(Math.max(...v)) : '-';
};

function report(rows) {
  const out = [];
  out.push('## Summary', '');
  out.push(
    '| scenario | mode | served req | Jain req | Jain tok | utilization (binding bucket) | 2nd half | upstream 429s | caller 429s | caller other errors | max p99 latency ms | max p99 queue ms |',
    '|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|',
  );
  for (const r of rows) {
    const u429 = r.upstreamRequests ? r.upstream429 / r.upstreamRequests : 0;
    out.push(
      `| ${r.key} | ${r.mode} | ${r.served} | ${f2(r.jainRequests)} | ${f2(r.jainTokens)} | ` +
        `${pc(r.util[r.binding])} (${r.binding}) | ${pc(r.utilHalf)} | ${r.upstream429} / ${r.upstreamRequests} (${pc(u429)}) | ` +
        `${r.caller429} | ${r.callerOther} | ${ms(Math.max(...r.perAgent.map((a) => a.p99 ?? 0)))} | ` +
        `${maxOrDash(r.perAgent.map((a) => a.q99))} |`,
    );
  }
  out.push('');
  for (const r of rows) {
    out.push(`### ${r.key} (${r.title}), ${r.mode}`, '');
    out.push(
      `window ${r.window.toFixed(1)} s; utilization of the input bucket ${pc(r.util.input)} ` +
        `(requests and output, which start full: ${pc(r.util.requests)}, ${pc(r.util.output)} of their refill); ` +
        `mean requests in flight upstream ${r.meanInflight.toFixed(2)}; ` +
        `upstream served by T (mock) ${r.upstreamServedAtT}, ` +
        `upstream 429s after T ${r.upstream429AfterT}, upstream 529s ${r.upstream529}, ` +
        `peak upstream concurrency ${r.peakConcurrency}${r.settled ? '' : '; SOME STREAMS HUNG AFTER T'}; ` +
        `upstream 429s by time (count@interval): ${r.upstream429Times.length > 12 ? `${r.upstream429Times.slice(0, 12).join(' ')} ...` : r.upstream429Times.join(' ') || 'none'}`,
      '',
    );
    out.push(
      '| agent | loops | served req | input tok | output tok | share of tokens | upstream 429s | caller 429s | caller other | p50 ms | p99 ms | p99 queue ms |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    );
    const totTok = r.perAgent.reduce((s, a) => s + a.tokens, 0) || 1;
    for (const a of r.perAgent) {
      out.push(
        `| ${a.name} | ${a.loops} | ${a.requests} | ${a.input} | ${a.output} | ${pc(a.tokens / totTok)} | ` +
          `${a.upstream429} | ${a.caller429} | ${a.callerOther} | ${ms(a.p50)} | ${ms(a.p99)} | ${ms(a.q99)} |`,
      );
    }
    if (r.errorSamples.length) out.push('', `caller errors, e.g.: ${r.errorSamples.map((e) => `\`${e}\``).join('; ')}`);
    out.push('');
  }
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------
mkdirSync(opts.out, { recursive: true });
const rows = [];
console.error(`fairness: results in ${opts.out}`);
for (const key of opts.scenarios.split(',')) {
  if (!SCENARIOS[key]) throw new Error(`unknown scenario ${key}`);
  for (const mode of opts.modes.split(',')) {
    if (!['direct', 'toklock'].includes(mode)) throw new Error(`unknown mode ${mode}`);
    const t = Date.now();
    console.error(`fairness: scenario ${key} (${SCENARIOS[key].title}), ${mode} ...`);
    const row = await runOne(key, mode);
    rows.push(row);
    console.error(
      `fairness:   ${row.served} served, Jain req ${f2(row.jainRequests)} tok ${f2(row.jainTokens)}, ` +
        `util ${pc(row.util[row.binding])} (${row.binding}; 2nd half ${pc(row.utilHalf)}), upstream 429 ${row.upstream429}/${row.upstreamRequests}, ` +
        `caller 429 ${row.caller429}, other ${row.callerOther} (${((Date.now() - t) / 1000).toFixed(0)} s)`,
    );
  }
}
const text = [
  `# toklock fairness benchmark`,
  '',
  `${new Date().toISOString()}; window ${opts.duration} s per run; mock ${MOCK_TIMING.join(' ')}; ` +
    `toklock args: ${opts.toklockArgs.join(' ') || '(none)'}`,
  '',
  report(rows),
].join('\n');
writeFileSync(join(opts.out, 'report.md'), text + '\n');
writeFileSync(join(opts.out, 'report.json'), JSON.stringify(rows, null, 2));
console.log(text);
console.error(`fairness: report in ${join(opts.out, 'report.md')}`);
