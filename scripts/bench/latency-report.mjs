// Markdown report for scripts/bench-latency: medians over rounds of the wrk summaries in
// raw.tsv (round, variant, connections, JSON), ratios to the direct and nginx floors, memory.
import { readFileSync } from 'node:fs';

const [rawPath, memPath] = process.argv.slice(2);
const rows = readFileSync(rawPath, 'utf8')
  .trim()
  .split('\n')
  .slice(1)
  .map((l) => {
    const [round, variant, conns, json] = l.split('\t');
    return { round: Number(round), variant, conns: Number(conns), ...JSON.parse(json) };
  });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const variants = [...new Set(rows.map((r) => r.variant))];
const pick = (v, c, f) => rows.filter((r) => r.variant === v && r.conns === c).map(f);
const med = (v, c, f) => median(pick(v, c, f));
const range = (v, c, f) => {
  const xs = pick(v, c, f);
  return `${Math.round(Math.min(...xs))}-${Math.round(Math.max(...xs))}`;
};
const rounds = Math.max(...rows.map((r) => r.round));

const out = [];
out.push(`## One request at a time (1 connection), medians of ${rounds} rounds`, '');
out.push(
  '| variant | p50 us | p99 us | added p50 vs direct us | added p99 vs direct us | added p50 / nginx added p50 | p50 range us | non-2xx |',
  '|---|---:|---:|---:|---:|---:|---|---:|',
);
const d50 = med('direct', 1, (r) => r.p50_us);
const d99 = med('direct', 1, (r) => r.p99_us);
const n50 = med('nginx', 1, (r) => r.p50_us) - d50;
for (const v of variants) {
  const p50 = med(v, 1, (r) => r.p50_us);
  const p99 = med(v, 1, (r) => r.p99_us);
  const nonOk = pick(v, 1, (r) => r.non2xx + r.socket_errors).reduce((a, b) => a + b, 0);
  out.push(
    `| ${v} | ${Math.round(p50)} | ${Math.round(p99)} | ${v === 'direct' ? '-' : Math.round(p50 - d50)} | ` +
      `${v === 'direct' ? '-' : Math.round(p99 - d99)} | ` +
      `${v === 'direct' || v === 'nginx' || n50 <= 0 ? '-' : ((p50 - d50) / n50).toFixed(2)} | ` +
      `${range(v, 1, (r) => r.p50_us)} | ${nonOk} |`,
  );
}
out.push('', `## Throughput at 32 connections, medians of ${rounds} rounds`, '');
out.push(
  '| variant | requests/s | vs direct | vs nginx | p50 us | p99 us | rps range | non-2xx |',
  '|---|---:|---:|---:|---:|---:|---|---:|',
);
const drps = med('direct', 32, (r) => r.rps);
const nrps = med('nginx', 32, (r) => r.rps);
for (const v of variants) {
  const rps = med(v, 32, (r) => r.rps);
  const nonOk = pick(v, 32, (r) => r.non2xx + r.socket_errors).reduce((a, b) => a + b, 0);
  out.push(
    `| ${v} | ${Math.round(rps)} | ${(rps / drps).toFixed(2)} | ${(rps / nrps).toFixed(2)} | ` +
      `${Math.round(med(v, 32, (r) => r.p50_us))} | ${Math.round(med(v, 32, (r) => r.p99_us))} | ` +
      `${range(v, 32, (r) => r.rps)} | ${nonOk} |`,
  );
}
if (memPath) {
  out.push('', '## Memory after the run', '', '| process | VmHWM | VmRSS |', '|---|---:|---:|');
  for (const l of readFileSync(memPath, 'utf8').trim().split('\n').slice(1)) {
    const [name, hwm, rss] = l.split('\t');
    out.push(`| ${name} | ${(Number(hwm) / 1024).toFixed(1)} MiB | ${(Number(rss) / 1024).toFixed(1)} MiB |`);
  }
}
console.log(out.join('\n'));
