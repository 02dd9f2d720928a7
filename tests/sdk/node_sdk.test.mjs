// The official Node SDK (npm @anthropic-ai/sdk) through the toklock binary to mock-anthropic.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startMock, startToklock, stop } from './procs.mjs';

const MODEL = 'claude-sonnet-4-5';
let mock;
let proxy;

before(async () => {
  mock = await startMock();
  proxy = await startToklock(mock.url);
});

after(async () => {
  await Promise.all([proxy && stop(proxy), mock && stop(mock)]);
});

const client = (baseURL, options = {}) => new Anthropic({ baseURL, apiKey: 'sk-ant-test-node', ...options });

test('messages.create round trip', async () => {
  const message = await client(proxy.url).messages.create({
    model: MODEL,
    max_tokens: 64,
    messages: [{ role: 'user', content: 'Say hello from Node.' }],
  });
  assert.equal(message.type, 'message');
  assert.equal(message.content[0].type, 'text');
  assert.ok(message.content[0].text.length > 0);
  assert.ok(message.usage.output_tokens > 0);
});

test('streaming arrives in several deltas and matches the final message', async () => {
  const stream = client(proxy.url).messages.stream({
    model: MODEL,
    max_tokens: 64,
    messages: [{ role: 'user', content: 'Stream a few words.' }],
  });
  const chunks = [];
  stream.on('text', (text) => chunks.push(text));
  const final = await stream.finalMessage();
  assert.ok(chunks.length > 1, `expected several deltas, got ${chunks.length}`);
  assert.equal(chunks.join(''), final.content[0].text);
  assert.ok(final.usage.output_tokens > 0);
});

test('models.list and countTokens pass through', async () => {
  const c = client(proxy.url);
  const models = await c.models.list();
  assert.ok(models.data.length > 0);
  const counted = await c.messages.countTokens({
    model: MODEL,
    messages: [{ role: 'user', content: 'count these words please' }],
  });
  assert.ok(counted.input_tokens > 0);
});

test('an unreachable upstream is an Anthropic-shaped 502 naming the host, not the key', async () => {
  const dead = await startToklock('http://127.0.0.1:1');
  try {
    await assert.rejects(
      client(dead.url, { maxRetries: 0 }).messages.create({
        model: MODEL,
        max_tokens: 8,
        messages: [{ role: 'user', content: 'x' }],
      }),
      (err) => {
        assert.equal(err.status, 502);
        assert.equal(err.error?.error?.type, 'api_error');
        assert.match(err.message, /127\.0\.0\.1/);
        assert.doesNotMatch(err.message, /sk-ant-test-node/);
        return true;
      },
    );
  } finally {
    await stop(dead);
  }
});

test('agents name themselves through ANTHROPIC_CUSTOM_HEADERS or a base-URL prefix', async () => {
  const saved = { ...process.env };
  try {
    process.env.ANTHROPIC_CUSTOM_HEADERS = 'x-toklock-agent: node-header-agent';
    process.env.ANTHROPIC_BASE_URL = proxy.url;
    process.env.ANTHROPIC_API_KEY = 'sk-ant-test-node';
    await new Anthropic().messages.create({
      model: MODEL,
      max_tokens: 8,
      messages: [{ role: 'user', content: 'named by header' }],
    });
    const stats = await (await fetch(`${mock.url}/_mock/stats`)).json();
    assert.ok(stats.by_caller['node-header-agent'], JSON.stringify(stats.by_caller));

    delete process.env.ANTHROPIC_CUSTOM_HEADERS;
    const message = await client(`${proxy.url}/a/node-path-agent`).messages.create({
      model: MODEL,
      max_tokens: 8,
      messages: [{ role: 'user', content: 'named by path' }],
    });
    assert.equal(message.type, 'message');
  } finally {
    process.env = saved;
  }
});
